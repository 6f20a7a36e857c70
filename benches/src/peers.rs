//! The processes under test and their configuration: the backend, NATS, the router, and
//! nginx and HAProxy set up as equivalent reverse proxies. Everything listens on
//! 127.0.0.1, on ports counted from one base port.
//!
//! "Equivalent" means: one worker (thread or process), pinned to the same CPU as the
//! router; upstream keep-alive on; no access log; the same forwarding headers the router
//! adds (X-Forwarded-For, X-Forwarded-Proto, a request id); keep-alive without a request
//! cap (the router has none; nginx closes after 1000 requests by default); the same
//! ECDSA P-256 certificate, TLS 1.2-1.3, ALPN h2 + http/1.1; WebSocket upgrades and a TCP
//! pass-through to the sink.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use crate::procs::{Proc, pinned};

/// Host name of the benchmark route.
pub const ROUTE_HOST: &str = "bench.local";

/// Where every listener of a run is: `base + offset`.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub base: u16,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Ports {
    pub fn backend_http(&self) -> SocketAddr {
        local(self.base)
    }
    pub fn backend_sink(&self) -> SocketAddr {
        local(self.base + 1)
    }
    pub fn nats(&self) -> SocketAddr {
        local(self.base + 2)
    }
    pub fn router_http(&self) -> SocketAddr {
        local(self.base + 10)
    }
    pub fn router_tls(&self) -> SocketAddr {
        local(self.base + 11)
    }
    pub fn router_status(&self) -> SocketAddr {
        local(self.base + 12)
    }
    pub fn router_routes(&self) -> SocketAddr {
        local(self.base + 13)
    }
    pub fn router_tcp(&self) -> SocketAddr {
        local(self.base + 14)
    }
    pub fn nginx_http(&self) -> SocketAddr {
        local(self.base + 20)
    }
    pub fn nginx_tls(&self) -> SocketAddr {
        local(self.base + 21)
    }
    pub fn nginx_tcp(&self) -> SocketAddr {
        local(self.base + 22)
    }
    pub fn haproxy_http(&self) -> SocketAddr {
        local(self.base + 30)
    }
    pub fn haproxy_tls(&self) -> SocketAddr {
        local(self.base + 31)
    }
    pub fn haproxy_tcp(&self) -> SocketAddr {
        local(self.base + 32)
    }
}

/// What is measured in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Straight to the backend: the ceiling.
    Direct,
    Router,
    Nginx,
    Haproxy,
}

impl Target {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Router => "router",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
        }
    }

    /// Plain HTTP address of the target.
    pub fn http(self, ports: &Ports) -> SocketAddr {
        match self {
            Target::Direct => ports.backend_http(),
            Target::Router => ports.router_http(),
            Target::Nginx => ports.nginx_http(),
            Target::Haproxy => ports.haproxy_http(),
        }
    }

    /// TLS address (the backend has none).
    pub fn tls(self, ports: &Ports) -> Option<SocketAddr> {
        match self {
            Target::Direct => None,
            Target::Router => Some(ports.router_tls()),
            Target::Nginx => Some(ports.nginx_tls()),
            Target::Haproxy => Some(ports.haproxy_tls()),
        }
    }

    /// TCP pass-through address to the sink.
    pub fn tcp(self, ports: &Ports) -> SocketAddr {
        match self {
            Target::Direct => ports.backend_sink(),
            Target::Router => ports.router_tcp(),
            Target::Nginx => ports.nginx_tcp(),
            Target::Haproxy => ports.haproxy_tcp(),
        }
    }
}

/// Paths of the run's generated files.
#[derive(Debug, Clone)]
pub struct Files {
    pub dir: PathBuf,
    pub logs: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file, as HAProxy wants them.
    pub combined: PathBuf,
}

impl Files {
    /// Creates `dir` (and `dir/logs`, `dir/conf`); paths are made absolute, as nginx
    /// resolves relative ones against its own prefix.
    pub fn new(dir: &Path) -> anyhow::Result<Files> {
        let dir = &std::path::absolute(dir)?;
        let conf = dir.join("conf");
        std::fs::create_dir_all(&conf)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(Files {
            dir: dir.to_owned(),
            logs: dir.join("logs"),
            cert: conf.join("cert.pem"),
            key: conf.join("key.pem"),
            combined: conf.join("combined.pem"),
        })
    }

    /// Generates a fresh self-signed ECDSA P-256 certificate for `bench.local` with openssl.
    pub fn generate_certificate(&self) -> anyhow::Result<()> {
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj", "/CN=bench.local"])
            .args(["-addext", "subjectAltName=DNS:bench.local,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&self.key)
            .arg("-out")
            .arg(&self.cert)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("cannot run openssl (apt-get install openssl)")?;
        if !status.success() {
            bail!("openssl could not generate a certificate ({status})");
        }
        let cert = std::fs::read_to_string(&self.cert)?;
        let key = std::fs::read_to_string(&self.key)?;
        std::fs::write(&self.combined, format!("{cert}{key}"))?;
        Ok(())
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.dir.join("conf").join(name)
    }
}

/// How the processes under test are set up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub ports: Ports,
    pub files: Files,
    /// CPU list for the proxies and the backend (`taskset -c`).
    pub server_cpus: String,
    /// CPU list for load generators and NATS.
    pub load_cpus: String,
    pub router_bin: PathBuf,
    pub router_workers: usize,
    /// Whether nginx and HAProxy add the forwarding headers the router adds.
    pub peer_headers: bool,
    /// Open-file limit the proxies may use.
    pub nofile: u64,
}

impl Setup {
    /// Starts the backend (`bench-load backend`) pinned to the server CPUs.
    pub fn start_backend(&self) -> anyhow::Result<Proc> {
        let me = std::env::current_exe()?;
        let mut cmd = pinned(&self.server_cpus, me);
        cmd.arg("backend")
            .arg("--http")
            .arg(self.ports.backend_http().to_string())
            .arg("--sink")
            .arg(self.ports.backend_sink().to_string());
        let mut proc = Proc::spawn("backend", &mut cmd, &self.files.logs)?;
        proc.wait_for_port(self.ports.backend_http(), Duration::from_secs(10))?;
        proc.wait_for_port(self.ports.backend_sink(), Duration::from_secs(10))?;
        Ok(proc)
    }

    /// Starts nats-server on the load CPUs (it stands for the rest of the platform).
    pub fn start_nats(&self) -> anyhow::Result<Proc> {
        let mut cmd = pinned(&self.load_cpus, "nats-server");
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.ports.nats().port().to_string());
        let mut proc = Proc::spawn("nats-server", &mut cmd, &self.files.logs)?;
        proc.wait_for_port(self.ports.nats(), Duration::from_secs(10))?;
        Ok(proc)
    }

    /// The router's config: the benchmark route, the TCP route, TLS, NATS if `nats`.
    pub fn router_config(&self, nats: bool) -> anyhow::Result<serde_json::Value> {
        let p = &self.ports;
        let cert = std::fs::read_to_string(&self.files.cert)?;
        let key = std::fs::read_to_string(&self.files.key)?;
        let tcp_port = p.router_tcp().port();
        let mut config = json!({
            "port": p.router_http().port(),
            "enable_ssl": true,
            "ssl_port": p.router_tls().port(),
            "tls_pem": [{"cert_chain": cert, "private_key": key}],
            "status": {
                "host": "127.0.0.1",
                "port": p.router_status().port(),
                "routes": {"port": p.router_routes().port()},
            },
            "routes": [
                {"host": "127.0.0.1", "port": p.backend_http().port(), "uris": [ROUTE_HOST]},
                {"host": "127.0.0.1", "port": p.backend_sink().port(), "external_port": tcp_port},
            ],
            "tcp_port_range": format!("{tcp_port}-{tcp_port}"),
            "tcp_listen_host": "127.0.0.1",
            "worker_threads": self.router_workers,
            "start_response_delay_interval": "0s",
            "logging": {"level": "warn"},
        });
        if nats {
            config["nats"] = json!({"hosts": [{"hostname": "127.0.0.1", "port": p.nats().port()}]});
        }
        Ok(config)
    }

    /// Starts the router (release binary) pinned to the server CPUs, and waits until it
    /// serves the benchmark route and the TCP route.
    pub fn start_router(&self, nats: bool) -> anyhow::Result<Proc> {
        let path = self.files.conf("router.yml");
        // JSON is YAML: the router reads it as its YAML config.
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&self.router_config(nats)?)?,
        )?;
        let mut cmd = pinned(&self.server_cpus, &self.router_bin);
        cmd.arg("--config").arg(&path);
        let mut proc = Proc::spawn("router", &mut cmd, &self.files.logs)?;
        proc.wait_for_port(self.ports.router_http(), Duration::from_secs(20))?;
        proc.wait_for_port(self.ports.router_tls(), Duration::from_secs(20))?;
        proc.wait_for_port(self.ports.router_tcp(), Duration::from_secs(20))?;
        Ok(proc)
    }

    /// nginx's config (see the module doc for what "equivalent" means).
    pub fn nginx_config(&self, worker_connections: u64) -> String {
        let p = &self.ports;
        let dir = self.files.dir.join("nginx");
        let stream_module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
        let (load_stream, stream) = if stream_module.exists() {
            (
                format!("load_module {};", stream_module.display()),
                format!(
                    "stream {{\n  server {{\n    listen {tcp};\n    proxy_pass {sink};\n    proxy_half_close on;\n  }}\n}}\n",
                    tcp = p.nginx_tcp(),
                    sink = p.backend_sink()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        format!(
            r#"{load_stream}
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
  worker_connections {worker_connections};
}}
http {{
  access_log off;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 900s;
  upstream backend {{
    server {backend};
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 90s;
  }}
  map $http_upgrade $connection_upgrade {{
    default upgrade;
    '' '';
  }}
  server {{
    listen {http};
    listen {tls} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
{nginx_headers}      proxy_buffer_size 64k;
      proxy_buffers 16 64k;
      proxy_max_temp_file_size 0;
      proxy_read_timeout 900s;
    }}
  }}
}}
{stream}"#,
            dir = dir.display(),
            nofile = self.nofile,
            backend = p.backend_http(),
            http = p.nginx_http(),
            tls = p.nginx_tls(),
            cert = self.files.cert.display(),
            key = self.files.key.display(),
            nginx_headers = if self.peer_headers {
                "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
                 proxy_set_header X-Forwarded-Proto $scheme;\n      \
                 proxy_set_header X-Request-Id $request_id;\n"
            } else {
                ""
            },
        )
    }

    /// Starts nginx (master + one worker) pinned to the server CPUs.
    pub fn start_nginx(&self, worker_connections: u64) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(self.files.dir.join("nginx"))?;
        let path = self.files.conf("nginx.conf");
        std::fs::write(&path, self.nginx_config(worker_connections))?;
        let mut cmd = pinned(&self.server_cpus, "nginx");
        cmd.arg("-c").arg(&path).arg("-e").arg("stderr");
        let mut proc = Proc::spawn("nginx", &mut cmd, &self.files.logs)?;
        proc.wait_for_port(self.ports.nginx_http(), Duration::from_secs(10))?;
        proc.wait_for_port(self.ports.nginx_tls(), Duration::from_secs(10))?;
        Ok(proc)
    }

    /// Whether nginx has its stream module here (Debian: libnginx-mod-stream).
    pub fn nginx_has_stream(&self) -> bool {
        Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists()
    }

    /// HAProxy's config (see the module doc).
    pub fn haproxy_config(&self, maxconn: u64) -> String {
        let p = &self.ports;
        format!(
            r#"global
  nbthread 1
  maxconn {maxconn}
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 5s
  timeout client 900s
  timeout server 900s
  timeout tunnel 900s
  timeout http-keep-alive 900s
  http-reuse always
frontend fe_http
  bind {http}
  bind {tls} ssl crt {combined} alpn h2,http/1.1
{haproxy_headers}  default_backend be_http
backend be_http
  server backend {backend}
frontend fe_tcp
  mode tcp
  bind {tcp}
  default_backend be_tcp
backend be_tcp
  mode tcp
  server sink {sink}
"#,
            http = p.haproxy_http(),
            tls = p.haproxy_tls(),
            tcp = p.haproxy_tcp(),
            combined = self.files.combined.display(),
            backend = p.backend_http(),
            sink = p.backend_sink(),
            haproxy_headers = if self.peer_headers {
                "  option forwardfor\n  \
                 http-request set-header X-Forwarded-Proto https if { ssl_fc }\n  \
                 http-request set-header X-Forwarded-Proto http if !{ ssl_fc }\n  \
                 http-request set-header X-Request-Id %[uuid]\n"
            } else {
                ""
            },
        )
    }

    /// Starts HAProxy in the foreground pinned to the server CPUs.
    pub fn start_haproxy(&self, maxconn: u64) -> anyhow::Result<Proc> {
        let path = self.files.conf("haproxy.cfg");
        std::fs::write(&path, self.haproxy_config(maxconn))?;
        let mut cmd = pinned(&self.server_cpus, "haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let mut proc = Proc::spawn("haproxy", &mut cmd, &self.files.logs)?;
        proc.wait_for_port(self.ports.haproxy_http(), Duration::from_secs(10))?;
        proc.wait_for_port(self.ports.haproxy_tls(), Duration::from_secs(10))?;
        Ok(proc)
    }
}
