//! Desired state in SQLite (`DATA/controller.db`): apps (each with its one `web`
//! process: the process GUID is the app GUID, as in CC), packages, builds, droplets,
//! routes with their destinations, and API tokens.
//!
//! Queries are short and local, so the connection sits behind a plain mutex and is used
//! from async handlers directly; nothing holds the lock across an `.await`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::util::{new_guid, timestamp};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
}

/// Whether an app should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppState {
    Started,
    Stopped,
}

impl AppState {
    fn as_str(self) -> &'static str {
        match self {
            AppState::Started => "STARTED",
            AppState::Stopped => "STOPPED",
        }
    }
    fn parse(s: &str) -> Self {
        if s == "STARTED" {
            AppState::Started
        } else {
            AppState::Stopped
        }
    }
}

/// An app and its web process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub guid: String,
    pub name: String,
    pub state: AppState,
    pub instances: u32,
    pub memory_mb: u32,
    /// The start command set by the user; overrides the droplet's.
    pub command: Option<String>,
    pub droplet_guid: Option<String>,
    /// Bumped whenever running instances must be replaced (restart, new droplet, memory).
    pub version: u64,
    /// `port` (default), `http` or `process`.
    pub health_check_type: String,
    pub health_check_endpoint: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Uploaded application bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub guid: String,
    pub app_guid: String,
    /// AWAITING_UPLOAD, PROCESSING_UPLOAD, READY or FAILED.
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One staging run of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    /// STAGING, STAGED or FAILED.
    pub state: String,
    pub error: Option<String>,
    pub droplet_guid: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A staged, runnable form of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Droplet {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    /// The `web` start command found at staging.
    pub command: String,
    pub created_at: String,
}

/// A route: a full host name (no separate domain in this lite API) and a context path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub guid: String,
    pub host: String,
    /// Empty, or starting with `/`.
    pub path: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Route {
    /// `host/path`, the form the router registers.
    pub fn url(&self) -> String {
        format!("{}{}", self.host, self.path)
    }
}

/// A route mapped to an app's web process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub guid: String,
    pub route_guid: String,
    pub app_guid: String,
    pub protocol: String,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything (`cloud_controller.admin`).
    Admin,
    /// GET only (`cloud_controller.read`).
    Read,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (
  guid TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
  instances INTEGER NOT NULL, memory_mb INTEGER NOT NULL, command TEXT,
  droplet_guid TEXT, version INTEGER NOT NULL, health_check_type TEXT NOT NULL,
  health_check_endpoint TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS packages (
  guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL, state TEXT NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS builds (
  guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL, package_guid TEXT NOT NULL,
  state TEXT NOT NULL, error TEXT, droplet_guid TEXT,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS droplets (
  guid TEXT PRIMARY KEY, app_guid TEXT NOT NULL, package_guid TEXT NOT NULL,
  command TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS routes (
  guid TEXT PRIMARY KEY, host TEXT NOT NULL, path TEXT NOT NULL,
  created_at TEXT NOT NULL, updated_at TEXT NOT NULL, UNIQUE (host, path));
CREATE TABLE IF NOT EXISTS destinations (
  guid TEXT PRIMARY KEY, route_guid TEXT NOT NULL, app_guid TEXT NOT NULL,
  protocol TEXT NOT NULL, UNIQUE (route_guid, app_guid));
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, scope TEXT NOT NULL);
";

const APP_COLUMNS: &str = "guid, name, state, instances, memory_mb, command, droplet_guid, version, \
     health_check_type, health_check_endpoint, created_at, updated_at";

fn app_from_row(row: &Row<'_>) -> rusqlite::Result<App> {
    Ok(App {
        guid: row.get(0)?,
        name: row.get(1)?,
        state: AppState::parse(&row.get::<_, String>(2)?),
        instances: row.get(3)?,
        memory_mb: row.get(4)?,
        command: row.get(5)?,
        droplet_guid: row.get(6)?,
        version: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
        health_check_type: row.get(8)?,
        health_check_endpoint: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

fn package_from_row(row: &Row<'_>) -> rusqlite::Result<Package> {
    Ok(Package {
        guid: row.get(0)?,
        app_guid: row.get(1)?,
        state: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

fn build_from_row(row: &Row<'_>) -> rusqlite::Result<Build> {
    Ok(Build {
        guid: row.get(0)?,
        app_guid: row.get(1)?,
        package_guid: row.get(2)?,
        state: row.get(3)?,
        error: row.get(4)?,
        droplet_guid: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

fn route_from_row(row: &Row<'_>) -> rusqlite::Result<Route> {
    Ok(Route {
        guid: row.get(0)?,
        host: row.get(1)?,
        path: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

fn destination_from_row(row: &Row<'_>) -> rusqlite::Result<Destination> {
    Ok(Destination {
        guid: row.get(0)?,
        route_guid: row.get(1)?,
        app_guid: row.get(2)?,
        protocol: row.get(3)?,
    })
}

/// SQLite integers are signed; versions never get near the limit.
fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// The parts of an app a client may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AppUpdate {
    pub name: Option<String>,
    pub instances: Option<u32>,
    pub memory_mb: Option<u32>,
    /// `Some(None)` clears the command (back to the droplet's).
    pub command: Option<Option<String>>,
    pub health_check_type: Option<String>,
    pub health_check_endpoint: Option<String>,
}

impl Store {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // WAL keeps readers (the API) from blocking on the health manager's writes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every write is
        // one statement or a transaction), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- apps ----

    /// Creates a stopped app; names are unique.
    pub fn create_app(&self, name: &str) -> Result<App, StoreError> {
        let now = timestamp();
        let app = App {
            guid: new_guid(),
            name: name.to_owned(),
            state: AppState::Stopped,
            instances: 1,
            memory_mb: 1024,
            command: None,
            droplet_guid: None,
            version: 1,
            health_check_type: "port".to_owned(),
            health_check_endpoint: String::new(),
            created_at: now.clone(),
            updated_at: now,
        };
        let res = self.conn().execute(
            &format!(
                "INSERT INTO apps ({APP_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
            ),
            params![
                app.guid,
                app.name,
                app.state.as_str(),
                app.instances,
                app.memory_mb,
                app.command,
                app.droplet_guid,
                db_int(app.version),
                app.health_check_type,
                app.health_check_endpoint,
                app.created_at,
                app.updated_at
            ],
        );
        match res {
            Ok(_) => Ok(app),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "App with the name '{name}' already exists."
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// All apps, by creation time.
    pub fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, name"
        ))?;
        let apps = stmt
            .query_map([], app_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(apps)
    }

    /// One app by GUID.
    pub fn app(&self, guid: &str) -> Result<App, StoreError> {
        self.conn()
            .query_row(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE guid = ?1"),
                [guid],
                app_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("App", guid))
    }

    /// Applies a partial update; changing the memory bumps the version (instances are
    /// replaced), changing only the instance count does not (as `cf scale -i`).
    pub fn update_app(&self, guid: &str, update: &AppUpdate) -> Result<App, StoreError> {
        let mut app = self.app(guid)?;
        let mut replace = false;
        if let Some(name) = &update.name {
            app.name = name.clone();
        }
        if let Some(n) = update.instances {
            app.instances = n;
        }
        if let Some(m) = update.memory_mb
            && m != app.memory_mb
        {
            app.memory_mb = m;
            replace = true;
        }
        if let Some(c) = &update.command
            && *c != app.command
        {
            app.command = c.clone();
            replace = true;
        }
        if let Some(t) = &update.health_check_type {
            app.health_check_type = t.clone();
        }
        if let Some(e) = &update.health_check_endpoint {
            app.health_check_endpoint = e.clone();
        }
        if replace {
            app.version += 1;
        }
        app.updated_at = timestamp();
        let res = self.conn().execute(
            "UPDATE apps SET name=?2, instances=?3, memory_mb=?4, command=?5, version=?6, \
             health_check_type=?7, health_check_endpoint=?8, updated_at=?9 WHERE guid=?1",
            params![
                app.guid,
                app.name,
                app.instances,
                app.memory_mb,
                app.command,
                db_int(app.version),
                app.health_check_type,
                app.health_check_endpoint,
                app.updated_at
            ],
        );
        match res {
            Ok(_) => Ok(app),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "App with the name '{}' already exists.",
                app.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the desired state; `bump` replaces running instances (restart).
    pub fn set_app_state(
        &self,
        guid: &str,
        state: AppState,
        bump: bool,
    ) -> Result<App, StoreError> {
        let n = self.conn().execute(
            "UPDATE apps SET state=?2, version=version+?3, updated_at=?4 WHERE guid=?1",
            params![guid, state.as_str(), i64::from(bump), timestamp()],
        )?;
        if n == 0 {
            return Err(not_found("App", guid));
        }
        self.app(guid)
    }

    /// Points the app at a droplet; running instances are replaced on the next start.
    pub fn set_current_droplet(&self, guid: &str, droplet_guid: &str) -> Result<App, StoreError> {
        let droplet = self.droplet(droplet_guid)?;
        if droplet.app_guid != guid {
            return Err(StoreError::Conflict(
                "Unable to assign current droplet. Ensure the droplet exists and belongs to this app."
                    .to_owned(),
            ));
        }
        let n = self.conn().execute(
            "UPDATE apps SET droplet_guid=?2, version=version+1, updated_at=?3 WHERE guid=?1",
            params![guid, droplet_guid, timestamp()],
        )?;
        if n == 0 {
            return Err(not_found("App", guid));
        }
        self.app(guid)
    }

    /// Deletes an app with its packages, builds, droplets and route mappings; returns the
    /// package and droplet GUIDs so the caller can remove their blobs.
    pub fn delete_app(&self, guid: &str) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let packages = collect_guids(&tx, "SELECT guid FROM packages WHERE app_guid=?1", guid)?;
        let droplets = collect_guids(&tx, "SELECT guid FROM droplets WHERE app_guid=?1", guid)?;
        let n = tx.execute("DELETE FROM apps WHERE guid=?1", [guid])?;
        if n == 0 {
            return Err(not_found("App", guid));
        }
        for table in ["packages", "builds", "droplets", "destinations"] {
            tx.execute(&format!("DELETE FROM {table} WHERE app_guid=?1"), [guid])?;
        }
        tx.commit()?;
        Ok((packages, droplets))
    }

    // ---- packages, builds, droplets ----

    /// A new package awaiting its bits.
    pub fn create_package(&self, app_guid: &str) -> Result<Package, StoreError> {
        self.app(app_guid)?;
        let now = timestamp();
        let p = Package {
            guid: new_guid(),
            app_guid: app_guid.to_owned(),
            state: "AWAITING_UPLOAD".to_owned(),
            created_at: now.clone(),
            updated_at: now,
        };
        self.conn().execute(
            "INSERT INTO packages (guid, app_guid, state, created_at, updated_at) VALUES (?1,?2,?3,?4,?5)",
            params![p.guid, p.app_guid, p.state, p.created_at, p.updated_at],
        )?;
        Ok(p)
    }

    /// One package.
    pub fn package(&self, guid: &str) -> Result<Package, StoreError> {
        self.conn()
            .query_row(
                "SELECT guid, app_guid, state, created_at, updated_at FROM packages WHERE guid=?1",
                [guid],
                package_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("Package", guid))
    }

    /// All packages, optionally of one app.
    pub fn list_packages(&self, app_guid: Option<&str>) -> Result<Vec<Package>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT guid, app_guid, state, created_at, updated_at FROM packages \
             WHERE ?1 IS NULL OR app_guid=?1 ORDER BY created_at",
        )?;
        let rows = stmt
            .query_map([app_guid], package_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Sets a package's state.
    pub fn set_package_state(&self, guid: &str, state: &str) -> Result<Package, StoreError> {
        self.conn().execute(
            "UPDATE packages SET state=?2, updated_at=?3 WHERE guid=?1",
            params![guid, state, timestamp()],
        )?;
        self.package(guid)
    }

    /// A new build in state STAGING.
    pub fn create_build(&self, package: &Package) -> Result<Build, StoreError> {
        let now = timestamp();
        let b = Build {
            guid: new_guid(),
            app_guid: package.app_guid.clone(),
            package_guid: package.guid.clone(),
            state: "STAGING".to_owned(),
            error: None,
            droplet_guid: None,
            created_at: now.clone(),
            updated_at: now,
        };
        self.conn().execute(
            "INSERT INTO builds (guid, app_guid, package_guid, state, error, droplet_guid, created_at, updated_at) \
             VALUES (?1,?2,?3,?4,NULL,NULL,?5,?6)",
            params![b.guid, b.app_guid, b.package_guid, b.state, b.created_at, b.updated_at],
        )?;
        Ok(b)
    }

    /// One build.
    pub fn build(&self, guid: &str) -> Result<Build, StoreError> {
        self.conn()
            .query_row(
                "SELECT guid, app_guid, package_guid, state, error, droplet_guid, created_at, updated_at \
                 FROM builds WHERE guid=?1",
                [guid],
                build_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("Build", guid))
    }

    /// Records the outcome of staging: a droplet, or an error.
    pub fn finish_build(
        &self,
        guid: &str,
        outcome: Result<Droplet, String>,
    ) -> Result<Build, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        match &outcome {
            Ok(d) => {
                tx.execute(
                    "INSERT INTO droplets (guid, app_guid, package_guid, command, created_at) VALUES (?1,?2,?3,?4,?5)",
                    params![d.guid, d.app_guid, d.package_guid, d.command, d.created_at],
                )?;
                tx.execute(
                    "UPDATE builds SET state='STAGED', droplet_guid=?2, updated_at=?3 WHERE guid=?1",
                    params![guid, d.guid, timestamp()],
                )?;
            }
            Err(reason) => {
                tx.execute(
                    "UPDATE builds SET state='FAILED', error=?2, updated_at=?3 WHERE guid=?1",
                    params![guid, reason, timestamp()],
                )?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.build(guid)
    }

    /// One droplet.
    pub fn droplet(&self, guid: &str) -> Result<Droplet, StoreError> {
        self.conn()
            .query_row(
                "SELECT guid, app_guid, package_guid, command, created_at FROM droplets WHERE guid=?1",
                [guid],
                |row| {
                    Ok(Droplet {
                        guid: row.get(0)?,
                        app_guid: row.get(1)?,
                        package_guid: row.get(2)?,
                        command: row.get(3)?,
                        created_at: row.get(4)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| not_found("Droplet", guid))
    }

    // ---- routes ----

    /// Creates a route; `host`+`path` is unique.
    pub fn create_route(&self, host: &str, path: &str) -> Result<Route, StoreError> {
        let now = timestamp();
        let r = Route {
            guid: new_guid(),
            host: host.to_ascii_lowercase(),
            path: path.to_owned(),
            created_at: now.clone(),
            updated_at: now,
        };
        let res = self.conn().execute(
            "INSERT INTO routes (guid, host, path, created_at, updated_at) VALUES (?1,?2,?3,?4,?5)",
            params![r.guid, r.host, r.path, r.created_at, r.updated_at],
        );
        match res {
            Ok(_) => Ok(r),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "Route already exists for host '{host}' and path '{path}'."
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// All routes.
    pub fn list_routes(&self) -> Result<Vec<Route>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT guid, host, path, created_at, updated_at FROM routes ORDER BY created_at, host, path",
        )?;
        let rows = stmt
            .query_map([], route_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One route.
    pub fn route(&self, guid: &str) -> Result<Route, StoreError> {
        self.conn()
            .query_row(
                "SELECT guid, host, path, created_at, updated_at FROM routes WHERE guid=?1",
                [guid],
                route_from_row,
            )
            .optional()?
            .ok_or_else(|| not_found("Route", guid))
    }

    /// Deletes a route and its mappings.
    pub fn delete_route(&self, guid: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM routes WHERE guid=?1", [guid])?;
        if n == 0 {
            return Err(not_found("Route", guid));
        }
        tx.execute("DELETE FROM destinations WHERE route_guid=?1", [guid])?;
        tx.commit()?;
        Ok(())
    }

    /// Maps a route to an app (idempotent).
    pub fn add_destination(
        &self,
        route_guid: &str,
        app_guid: &str,
        protocol: &str,
    ) -> Result<(), StoreError> {
        self.route(route_guid)?;
        self.app(app_guid)?;
        self.conn().execute(
            "INSERT OR IGNORE INTO destinations (guid, route_guid, app_guid, protocol) VALUES (?1,?2,?3,?4)",
            params![new_guid(), route_guid, app_guid, protocol],
        )?;
        Ok(())
    }

    /// Unmaps one destination.
    pub fn delete_destination(
        &self,
        route_guid: &str,
        destination_guid: &str,
    ) -> Result<(), StoreError> {
        let n = self.conn().execute(
            "DELETE FROM destinations WHERE route_guid=?1 AND guid=?2",
            params![route_guid, destination_guid],
        )?;
        if n == 0 {
            return Err(not_found("Destination", destination_guid));
        }
        Ok(())
    }

    /// The destinations of a route, or of every route when `route_guid` is `None`.
    pub fn destinations(&self, route_guid: Option<&str>) -> Result<Vec<Destination>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT guid, route_guid, app_guid, protocol FROM destinations \
             WHERE ?1 IS NULL OR route_guid=?1 ORDER BY rowid",
        )?;
        let rows = stmt
            .query_map([route_guid], destination_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The routes mapped to an app.
    pub fn app_routes(&self, app_guid: &str) -> Result<Vec<Route>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT r.guid, r.host, r.path, r.created_at, r.updated_at FROM routes r \
             JOIN destinations d ON d.route_guid = r.guid WHERE d.app_guid=?1 ORDER BY r.created_at, r.host",
        )?;
        let rows = stmt
            .query_map([app_guid], route_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // ---- tokens ----

    /// Records a token with its scope.
    pub fn add_token(&self, token: &str, scope: Scope) -> Result<(), StoreError> {
        let scope = match scope {
            Scope::Admin => "admin",
            Scope::Read => "read",
        };
        self.conn().execute(
            "INSERT OR REPLACE INTO tokens (token, scope) VALUES (?1, ?2)",
            params![token, scope],
        )?;
        Ok(())
    }

    /// The scope of a token, if it is known.
    pub fn token_scope(&self, token: &str) -> Result<Option<Scope>, StoreError> {
        let scope: Option<String> = self
            .conn()
            .query_row("SELECT scope FROM tokens WHERE token=?1", [token], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(scope.map(|s| {
            if s == "admin" {
                Scope::Admin
            } else {
                Scope::Read
            }
        }))
    }
}

fn collect_guids(conn: &Connection, sql: &str, arg: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map([arg], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests;
