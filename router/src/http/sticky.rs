//! Sticky sessions, as gorouter does them: a response that sets one of the app's session
//! cookies (`sticky_session_cookie_names`) also gets `__VCAP_ID__=<instance id>`, and a
//! request that carries both goes back to that instance while it exists.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue, SET_COOKIE};

/// The router's cookie naming the instance a session sticks to.
pub const VCAP_ID: &str = "__VCAP_ID__";

/// The instance a request asks to stick to: the `__VCAP_ID__` value, if the request also
/// carries one of the sticky session cookies (gorouter ignores `__VCAP_ID__` alone).
pub fn requested_instance<'h>(headers: &'h HeaderMap, sticky_names: &[String]) -> Option<&'h str> {
    let mut vcap_id = None;
    let mut has_session = false;
    for value in headers.get_all(COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((name, cookie_value)) = pair.trim().split_once('=') else {
                continue;
            };
            let name = name.trim();
            if name == VCAP_ID {
                vcap_id = Some(cookie_value.trim().trim_matches('"'));
            } else if sticky_names.iter().any(|n| n == name) {
                has_session = true;
            }
        }
    }
    vcap_id.filter(|id| has_session && !id.is_empty())
}

/// Attributes of the app's session cookie that `__VCAP_ID__` copies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    pub secure: bool,
    pub same_site: Option<String>,
    pub expires: Option<String>,
    /// A negative Max-Age (delete the cookie) is copied; positive ones are not (gorouter).
    pub max_age: Option<String>,
    pub partitioned: bool,
}

/// What the app's response says about sticky cookies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseCookies {
    /// The app set one of the sticky session cookies (its attributes).
    pub session: Option<SessionCookie>,
    /// The app set `__VCAP_ID__` itself: the router leaves it alone.
    pub sets_vcap_id: bool,
}

/// Reads the app's `Set-Cookie` headers.
pub fn response_cookies(headers: &HeaderMap, sticky_names: &[String]) -> ResponseCookies {
    let mut found = ResponseCookies::default();
    for value in headers.get_all(SET_COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        let mut parts = value.split(';');
        let Some((name, _)) = parts.next().and_then(|p| p.split_once('=')) else {
            continue;
        };
        let name = name.trim();
        if name == VCAP_ID {
            found.sets_vcap_id = true;
            continue;
        }
        if !sticky_names.iter().any(|n| n == name) {
            continue;
        }
        let mut cookie = SessionCookie::default();
        for attr in parts {
            let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
            let (key, val) = (key.trim(), val.trim());
            if key.eq_ignore_ascii_case("secure") {
                cookie.secure = true;
            } else if key.eq_ignore_ascii_case("samesite") {
                cookie.same_site = Some(val.to_owned());
            } else if key.eq_ignore_ascii_case("expires") {
                cookie.expires = Some(val.to_owned());
            } else if key.eq_ignore_ascii_case("max-age") && val.starts_with('-') {
                cookie.max_age = Some(val.to_owned());
            } else if key.eq_ignore_ascii_case("partitioned") {
                cookie.partitioned = true;
            }
        }
        found.session = Some(cookie);
    }
    found
}

/// The `Set-Cookie` value for `__VCAP_ID__`; `None` if the id cannot be a cookie value.
pub fn vcap_id_cookie(
    instance_id: &str,
    context_path: &str,
    session: Option<&SessionCookie>,
    secure_cookies: bool,
) -> Option<HeaderValue> {
    let valid_value = instance_id
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    if !valid_value {
        return None;
    }
    // A route's path may hold `;`: dropped, as Go's http.Cookie (gorouter) drops it and
    // controls, or `/x;Domain=...` would add attributes to the cookie.
    let path: String = context_path
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != ';')
        .collect();
    let path = if path.is_empty() { "/" } else { &path };
    let mut cookie = format!("{VCAP_ID}={instance_id}; Path={path}; HttpOnly");
    let session = session.cloned().unwrap_or_default();
    if session.secure || secure_cookies {
        cookie.push_str("; Secure");
    }
    if let Some(same_site) = &session.same_site {
        cookie.push_str("; SameSite=");
        cookie.push_str(same_site);
    }
    if let Some(expires) = &session.expires {
        cookie.push_str("; Expires=");
        cookie.push_str(expires);
    }
    if let Some(max_age) = &session.max_age {
        cookie.push_str("; Max-Age=");
        cookie.push_str(max_age);
    }
    if session.partitioned {
        cookie.push_str("; Partitioned");
    }
    HeaderValue::from_str(&cookie).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["JSESSIONID".into()]
    }

    #[test]
    fn vcap_id_counts_only_beside_a_session_cookie() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "__VCAP_ID__=abc".parse().unwrap());
        assert_eq!(requested_instance(&h, &names()), None);
        h.append(COOKIE, "a=1; JSESSIONID=xyz".parse().unwrap());
        assert_eq!(requested_instance(&h, &names()), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "JSESSIONID=x; __VCAP_ID__=\"q\"".parse().unwrap());
        assert_eq!(requested_instance(&h, &names()), Some("q"));
    }

    #[test]
    fn session_cookie_attributes_are_copied() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "other=1; Secure".parse().unwrap());
        h.append(
            SET_COOKIE,
            "JSESSIONID=s; Path=/app; Secure; SameSite=Lax; Max-Age=60; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
                .parse()
                .unwrap(),
        );
        let found = response_cookies(&h, &names());
        assert!(!found.sets_vcap_id);
        let session = found.session.unwrap();
        assert!(session.secure);
        assert_eq!(session.same_site.as_deref(), Some("Lax"));
        assert_eq!(session.max_age, None);
        let cookie = vcap_id_cookie("inst-1", "/app", Some(&session), false).unwrap();
        assert_eq!(
            cookie,
            "__VCAP_ID__=inst-1; Path=/app; HttpOnly; Secure; SameSite=Lax; Expires=Wed, 21 Oct 2026 07:28:00 GMT"
        );
        assert_eq!(
            vcap_id_cookie("i", "", None, false).unwrap(),
            "__VCAP_ID__=i; Path=/; HttpOnly"
        );
        assert!(vcap_id_cookie("bad;id", "", None, false).is_none());
        assert_eq!(
            vcap_id_cookie("i", "/x;Domain=evil.example", None, false).unwrap(),
            "__VCAP_ID__=i; Path=/xDomain=evil.example; HttpOnly"
        );
    }
}
