//! Route keys: how registered URIs and request hosts are normalised.

use std::sync::Arc;

/// A registered route: lowercased host (`*.example.com` for a wildcard) and context path
/// (lowercased, no trailing `/`, "" for the whole host). gorouter lowercases the path too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub host: Arc<str>,
    pub path: Box<str>,
}

impl RouteKey {
    /// Normalises a registered `host[/path][?query]` URI (already validated).
    pub fn parse(uri: &str) -> RouteKey {
        let mut buf = String::new();
        let (host, path) = normalize_uri(uri, &mut buf);
        RouteKey {
            host: Arc::from(host),
            path: Box::from(path),
        }
    }

    /// Whether the host is a wildcard (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }
}

/// Normalises a registered URI into `buf` (reused between calls, so that looking up a
/// known route allocates nothing) and returns its host and context path, as in
/// [`RouteKey`].
pub fn normalize_uri<'b>(uri: &str, buf: &'b mut String) -> (&'b str, &'b str) {
    let uri = uri.split('?').next().unwrap_or_default();
    buf.clear();
    buf.push_str(uri);
    buf.make_ascii_lowercase();
    let (host, path) = match buf.find('/') {
        Some(slash) => buf.split_at(slash),
        None => (buf.as_str(), ""),
    };
    // The port, if a registration carries one, is not part of the route.
    (strip_port(host), path.trim_end_matches('/'))
}

fn strip_port(host: &str) -> &str {
    // memchr, not `str::find`: the lookup runs this on every request.
    let bytes = host.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        memchr::memchr(b']', bytes).map(|end| end + 1)
    } else {
        memchr::memchr(b':', bytes)
    };
    &host[..end.unwrap_or(host.len())]
}

/// Longest request host the lookup takes (DNS names are at most 253 bytes).
pub const MAX_HOST_LEN: usize = 255;

/// A request's Host, normalised on the stack for the lookup: lowercased, without port
/// or trailing dot. Brackets keep an IPv6 literal whole (gorouter cuts at the first `:`).
///
/// The wildcard keys a host can match (`*.b.c`, then `*.c` for `a.b.c`) are made in
/// place: the byte before each dot is overwritten with `*`, so no key is copied. The
/// buffer keeps one spare byte in front for a host that starts with a dot.
///
/// The buffer is the caller's ([`HostBuf`]): a 256-byte array inside the returned value
/// was copied on every lookup (a tenth of the lookup's time).
pub struct RequestHost<'b> {
    buf: &'b mut HostBuf,
    end: usize,
    /// Where the search for the next wildcard's dot resumes.
    next_label: usize,
    /// Dots from `next_label` on; counted when the first wildcard key is asked for.
    dots_left: Option<usize>,
}

/// Room for a [`RequestHost`]: one spare byte, then the host.
pub type HostBuf = [u8; MAX_HOST_LEN + 1];

impl<'b> RequestHost<'b> {
    /// `None` if the host is empty or longer than [`MAX_HOST_LEN`].
    pub fn parse(host: &str, buf: &'b mut HostBuf) -> Option<RequestHost<'b>> {
        let raw = host.as_bytes();
        let len = if raw.len() <= MAX_HOST_LEN && raw.first() != Some(&b'[') {
            // The common case in one pass, eight bytes at a time: lowercase and find the
            // port's `:` (a byte-wise copy, a `memchr` for the port and its call
            // overhead were a third of the lookup's instructions).
            lowercase_to_colon(raw, &mut buf[1..=raw.len()])
        } else {
            let host = strip_port(host);
            if host.len() > MAX_HOST_LEN {
                return None;
            }
            for (o, b) in buf[1..=host.len()].iter_mut().zip(host.bytes()) {
                *o = b.to_ascii_lowercase();
            }
            host.len()
        };
        let len = if len > 0 && buf[len] == b'.' {
            len - 1
        } else {
            len
        };
        if len == 0 {
            return None;
        }
        Some(RequestHost {
            buf,
            end: len + 1,
            next_label: 1,
            dots_left: None,
        })
    }

    /// The host itself, as an exact route is keyed.
    pub fn exact(&self) -> &[u8] {
        &self.buf[1..self.end]
    }

    /// The next wildcard route key that could match, most specific first, skipping
    /// suffixes whose number of labels no wildcard route has (`suffix_labels`, see
    /// [`label_bit`]). The exact host is gone from the buffer after the first key.
    pub fn next_wildcard(&mut self, suffix_labels: u64) -> Option<&[u8]> {
        if suffix_labels == 0 {
            return None;
        }
        let dots_left = self
            .dots_left
            .get_or_insert_with(|| memchr::memchr_iter(b'.', &self.buf[1..self.end]).count());
        loop {
            let rest = &self.buf[self.next_label..self.end];
            let dot = self.next_label + memchr::memchr(b'.', rest)?;
            self.next_label = dot + 1;
            *dots_left -= 1;
            if suffix_labels & label_bit(*dots_left + 1) != 0 {
                self.buf[dot - 1] = b'*';
                return Some(&self.buf[dot - 1..self.end]);
            }
        }
    }
}

/// Copies `raw` into `out` (as long) with ASCII capitals lowercased, and returns how
/// many bytes come before the first `:` (all of them if there is none).
fn lowercase_to_colon(raw: &[u8], out: &mut [u8]) -> usize {
    let (words, tail) = raw.as_chunks::<8>();
    let (out_words, _) = out.as_chunks_mut::<8>();
    for (i, (word, out_word)) in words.iter().zip(out_words).enumerate() {
        let (lower, colons) = lowercase_word(u64::from_le_bytes(*word));
        *out_word = lower.to_le_bytes();
        if colons != 0 {
            return i * 8 + first_marked_byte(colons);
        }
    }
    if tail.is_empty() {
        return raw.len();
    }
    // The tail as the last eight bytes (re-reading some already done, none of them a
    // colon), so that no byte-wise copy is needed; a host shorter than a word is padded
    // with zeros, which are never marked.
    let (start, word) = match raw.last_chunk::<8>() {
        Some(last) => (raw.len() - 8, *last),
        None => {
            let mut word = [0; 8];
            word[..tail.len()].copy_from_slice(tail);
            (0, word)
        }
    };
    let (lower, colons) = lowercase_word(u64::from_le_bytes(word));
    let lower = lower.to_le_bytes();
    match out.last_chunk_mut::<8>() {
        Some(last) => *last = lower,
        None => out.copy_from_slice(&lower[..tail.len()]),
    }
    if colons != 0 {
        start + first_marked_byte(colons)
    } else {
        raw.len()
    }
}

const EVERY_BYTE: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Eight bytes (little-endian) with ASCII capitals lowercased and other bytes kept, and
/// the high bit of each byte that is `:` set (bytes after the first `:` may be marked
/// too, the first one is exact).
fn lowercase_word(word: u64) -> (u64, u64) {
    // Seven low bits of each byte plus a constant: no carry crosses bytes, and the high
    // bit tells whether the byte is >= 'A', and > 'Z'.
    let low7 = word & !HIGH_BITS;
    let from_a = low7 + EVERY_BYTE * (0x80 - u64::from(b'A'));
    let past_z = low7 + EVERY_BYTE * (0x80 - u64::from(b'Z') - 1);
    // Bytes with the high bit set are not ASCII and stay as they are.
    let capitals = from_a & !past_z & !word & HIGH_BITS;
    let lower = word | (capitals >> 2);
    // A byte is `:` where `word ^ ':'` is zero.
    let x = word ^ (EVERY_BYTE * u64::from(b':'));
    let colons = x.wrapping_sub(EVERY_BYTE) & !x & HIGH_BITS;
    (lower, colons)
}

/// The index of the lowest byte whose high bit is set in `marks` (not zero).
fn first_marked_byte(marks: u64) -> usize {
    marks.trailing_zeros() as usize / 8
}

/// The bit standing for domain names of `labels` labels in a set of label counts (all
/// counts from 63 on share the last bit).
pub fn label_bit(labels: usize) -> u64 {
    1 << labels.min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_uris_are_normalised() {
        let k = RouteKey::parse("App.Example.COM/Foo/Bar/?x=1");
        assert_eq!(&*k.host, "app.example.com");
        assert_eq!(&*k.path, "/foo/bar");
        let k = RouteKey::parse("a.b:8080");
        assert_eq!((&*k.host, &*k.path), ("a.b", ""));
        assert!(RouteKey::parse("*.b.c/").is_wildcard());
    }

    fn exact(host: &str) -> Option<String> {
        RequestHost::parse(host, &mut [0; MAX_HOST_LEN + 1])
            .map(|h| String::from_utf8_lossy(h.exact()).into_owned())
    }

    #[test]
    fn request_hosts_lose_port_and_case() {
        assert_eq!(exact("A.B:81").as_deref(), Some("a.b"));
        assert_eq!(exact("[::1]:81").as_deref(), Some("[::1]"));
        assert_eq!(exact("a.b.").as_deref(), Some("a.b"));
        assert_eq!(exact(":80"), None);
        assert_eq!(exact(&"a".repeat(255)).map(|h| h.len()), Some(255));
        assert_eq!(exact(&"a".repeat(256)), None);
    }

    #[test]
    fn hosts_of_every_length_and_byte_are_normalised_as_the_fuzz_model_does() {
        let mut cases: Vec<String> = Vec::new();
        for len in 0..40 {
            let base: String = (0..len).map(|i| (b'A' + (i % 26) as u8) as char).collect();
            cases.push(base.clone());
            cases.push(format!("{base}:8080"));
            cases.push(format!("{base}.:1"));
            cases.push(format!("{base}.Z"));
        }
        // Every ASCII byte, and non-ASCII text, at every offset of a word.
        for b in 0u8..128 {
            for at in 0..9 {
                let mut host = "Ab.Cd.Ef.Gh".to_owned();
                host.insert(at, b as char);
                cases.push(host);
            }
        }
        cases.extend(["Ünï.Cödé:80", "É:", "@[`{", "[::1]:81", ":", "."].map(String::from));
        cases.push("A".repeat(MAX_HOST_LEN));
        cases.push(format!("{}:80", "A".repeat(MAX_HOST_LEN)));
        cases.push("A".repeat(MAX_HOST_LEN + 1));
        for case in &cases {
            assert_eq!(exact(case), crate::fuzzing::request_host(case), "{case:?}");
        }
    }

    #[test]
    fn wildcard_keys_go_from_most_to_least_specific() {
        let keys = |host: &str| {
            let mut buf = [0; MAX_HOST_LEN + 1];
            let mut host = RequestHost::parse(host, &mut buf).unwrap();
            let mut keys = Vec::new();
            while let Some(key) = host.next_wildcard(u64::MAX) {
                keys.push(String::from_utf8_lossy(key).into_owned());
            }
            keys
        };
        assert_eq!(keys("A.b.C:80"), ["*.b.c", "*.c"]);
        assert_eq!(keys(".b"), ["*.b"]);
        assert_eq!(keys("a..b"), ["*..b", "*.b"]);
        assert_eq!(keys("b."), Vec::<String>::new());
        assert_eq!(keys("a.b..."), ["*.b..", "*..", "*."]);
    }

    #[test]
    fn wildcard_keys_of_absent_label_counts_are_skipped() {
        let mut buf = [0; MAX_HOST_LEN + 1];
        let mut host = RequestHost::parse("a.b.c.d", &mut buf).unwrap();
        let two_labels = label_bit(2);
        assert_eq!(host.next_wildcard(two_labels), Some(&b"*.c.d"[..]));
        assert_eq!(host.next_wildcard(two_labels), None);
        let mut host = RequestHost::parse(&format!("a{}", ".b".repeat(70)), &mut buf).unwrap();
        assert_eq!(
            host.next_wildcard(label_bit(64)).map(<[u8]>::len),
            Some(141)
        );
        assert_eq!(
            host.next_wildcard(label_bit(64)).map(<[u8]>::len),
            Some(139)
        );
    }
}
