//! An endpoint's tags, stored compactly.
//!
//! route-emitter sends a handful of tags with every registration (component, app, space
//! and org names and guids). Only `/routes` shows them, yet as a `BTreeMap<String, String>`
//! they were a B-tree node plus two heap strings per tag: about 1 KB per endpoint, a third
//! of a route's memory. Here they are one allocation: each key and value as a length
//! (LEB128) followed by its bytes, pairs sorted by key as in the message's map.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Key/value tags of an endpoint, in one allocation, sorted by key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Tags(Box<[u8]>);

impl Tags {
    /// The tags of a registration message.
    pub fn from_map(map: &BTreeMap<String, String>) -> Tags {
        if map.is_empty() {
            return Tags::default();
        }
        let len = map.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        let mut bytes = Vec::with_capacity(len);
        for (key, value) in map {
            push_text(&mut bytes, key);
            push_text(&mut bytes, value);
        }
        Tags(bytes.into_boxed_slice())
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> TagsIter<'_> {
        TagsIter { rest: &self.0 }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether these are exactly the tags of `map` (without building a copy).
    pub fn matches(&self, map: &BTreeMap<String, String>) -> bool {
        let mut ours = self.iter();
        for (key, value) in map {
            if ours.next() != Some((key.as_str(), value.as_str())) {
                return false;
            }
        }
        ours.next().is_none()
    }
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    let mut len = text.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Iterator over [`Tags`]' pairs.
#[derive(Debug, Clone)]
pub struct TagsIter<'a> {
    rest: &'a [u8],
}

impl<'a> TagsIter<'a> {
    fn text(&mut self) -> Option<&'a str> {
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let (&byte, rest) = self.rest.split_first()?;
            self.rest = rest;
            len |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let (text, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        // Written from `&str`s by `push_text`, so always UTF-8.
        std::str::from_utf8(text).ok()
    }
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.text()?;
        let value = self.text()?;
        Some((key, value))
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A JSON object, as the message's map was.
impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_compare_with_the_message_map() {
        let mut map = BTreeMap::new();
        map.insert("component".to_owned(), "route-emitter".to_owned());
        map.insert("long".to_owned(), "x".repeat(300));
        map.insert(String::new(), "é\u{0}".to_owned());
        let tags = Tags::from_map(&map);
        let pairs: Vec<_> = tags.iter().collect();
        let expected: Vec<_> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, expected);
        assert!(tags.matches(&map));
        assert_eq!(
            serde_json::to_value(&tags).unwrap(),
            serde_json::to_value(&map).unwrap()
        );
        map.insert("extra".to_owned(), String::new());
        assert!(!tags.matches(&map));
        map.remove("extra");
        map.insert("long".to_owned(), "y".to_owned());
        assert!(!tags.matches(&map));
        assert!(Tags::from_map(&BTreeMap::new()).matches(&BTreeMap::new()));
        assert!(!Tags::default().matches(&map));
    }
}
