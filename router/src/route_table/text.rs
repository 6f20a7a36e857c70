//! Endpoint fields whose values repeat across endpoints, stored once.
//!
//! Most endpoints have instance index "0" or another small number, and a handful of
//! availability zones, isolation segments and route services exist in a whole
//! foundation. As `String`s each endpoint paid a heap copy of each (and another for the
//! index's header value); interned, each distinct value is one allocation.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use http::HeaderValue;

/// A string shared by every endpoint with the same value (see [`Interner`]). Reads as a
/// `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SharedText(Arc<str>);

impl SharedText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for SharedText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedText {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedText {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for SharedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for SharedText {
    fn from(text: &str) -> Self {
        SharedText(Arc::from(text))
    }
}

impl PartialEq<str> for SharedText {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for SharedText {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for SharedText {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<SharedText> for str {
    fn eq(&self, other: &SharedText) -> bool {
        *self == *other.0
    }
}

impl PartialEq<SharedText> for &str {
    fn eq(&self, other: &SharedText) -> bool {
        **self == *other.0
    }
}

impl PartialEq<SharedText> for String {
    fn eq(&self, other: &SharedText) -> bool {
        **self == *other.0
    }
}

/// The registry's distinct texts, and the header values made of them.
#[derive(Debug, Default)]
pub(super) struct Interner {
    texts: HashSet<Arc<str>>,
    /// Keyed by the interned text (a second reference to it).
    headers: HashMap<Arc<str>, HeaderValue>,
}

impl Interner {
    /// The shared copy of `text`.
    pub fn text(&mut self, text: &str) -> SharedText {
        if let Some(shared) = self.texts.get(text) {
            return SharedText(shared.clone());
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.insert(shared.clone());
        SharedText(shared)
    }

    /// A header value of `text` sharing its bytes with every other header value of the
    /// same text. `None` if `text` is not a valid header value.
    pub fn header(&mut self, text: &SharedText) -> Option<HeaderValue> {
        if let Some(value) = self.headers.get(text.as_str()) {
            return Some(value.clone());
        }
        let value = HeaderValue::from_str(text).ok()?;
        self.headers.insert(text.0.clone(), value.clone());
        Some(value)
    }

    /// Forgets the texts (and their header values) no endpoint holds any more.
    pub fn forget_unused(&mut self) {
        // A text with a header value is held by both maps.
        self.headers.retain(|text, _| Arc::strong_count(text) > 2);
        self.texts.retain(|text| Arc::strong_count(text) > 1);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.texts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_copy_until_unused() {
        let mut interner = Interner::default();
        let a = interner.text("z1");
        let b = interner.text("z1");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "z1");
        assert!("z1" == a);
        let header = interner.header(&a).unwrap();
        assert_eq!(header, "z1");
        assert_eq!(
            interner.header(&b).unwrap().as_bytes().as_ptr(),
            header.as_bytes().as_ptr()
        );
        interner.forget_unused();
        assert_eq!(interner.len(), 1);
        drop((a, b));
        interner.forget_unused();
        assert_eq!(interner.len(), 0);
        let bad = interner.text("bad\n");
        assert!(interner.header(&bad).is_none());
    }
}
