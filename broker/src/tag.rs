//! Capability tags: flat, exact strings a worker advertises and a task requires.
//!
//! A tag is lowercase ASCII matching `[a-z0-9][a-z0-9._-]*`, at most
//! [`MAX_TAG_LEN`] characters. `python3.12` is a real tag, and `.` separates
//! subject tokens in NATS, so [`Tag::subject_token`] maps tags to tokens
//! injectively: `_` becomes `__` and `.` becomes `_d`. Every token decodes back
//! to exactly one tag.
//!
//! The same rules name workers and agents ([`Tag::parse_name`] tells which
//! field was wrong), so any name can sit in a subject.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest tag, in characters.
pub const MAX_TAG_LEN: usize = 64;
/// Most tags in one set: a task's capabilities, a worker's tags or its
/// agents. Bounds the cost of matching a task against a worker.
pub const MAX_TAGS: usize = 64;

/// Why a tag was rejected. Tests match on the variant, humans read `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TagError {
    #[error("{field}: empty value; a name must match [a-z0-9][a-z0-9._-]*")]
    Empty { field: &'static str },
    #[error("{field}: {value:?} is {len} characters; at most {MAX_TAG_LEN} are allowed")]
    TooLong {
        field: &'static str,
        value: String,
        len: usize,
    },
    #[error(
        "{field}: {value:?} contains upper case {ch:?}; names are lowercase ([a-z0-9][a-z0-9._-]*)"
    )]
    UpperCase {
        field: &'static str,
        value: String,
        ch: char,
    },
    #[error("{field}: {value:?} contains {ch:?}; only a-z, 0-9, '.', '_' and '-' are allowed ([a-z0-9][a-z0-9._-]*)")]
    InvalidChar {
        field: &'static str,
        value: String,
        ch: char,
    },
    #[error("{field}: {value:?} must start with a-z or 0-9 ([a-z0-9][a-z0-9._-]*)")]
    BadStart { field: &'static str, value: String },
    #[error("subject token {0:?} does not decode to a tag")]
    BadToken(String),
    #[error("{field}: {count} names; at most {MAX_TAGS} are allowed")]
    TooMany { field: &'static str, count: usize },
}

/// A validated capability tag (or worker/agent name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    /// Parses a capability tag.
    pub fn parse(value: &str) -> Result<Tag, TagError> {
        Tag::parse_name("capability", value)
    }

    /// Parses a name under the tag rules, naming `field` in the error.
    pub fn parse_name(field: &'static str, value: &str) -> Result<Tag, TagError> {
        let len = value.chars().count();
        if len == 0 {
            return Err(TagError::Empty { field });
        }
        if len > MAX_TAG_LEN {
            return Err(TagError::TooLong {
                field,
                value: value.to_string(),
                len,
            });
        }
        for ch in value.chars() {
            if ch.is_ascii_uppercase() {
                return Err(TagError::UpperCase {
                    field,
                    value: value.to_string(),
                    ch,
                });
            }
            if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')) {
                return Err(TagError::InvalidChar {
                    field,
                    value: value.to_string(),
                    ch,
                });
            }
        }
        let first = value.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(TagError::BadStart {
                field,
                value: value.to_string(),
            });
        }
        Ok(Tag(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The injective subject token for this tag: `_` → `__`, `.` → `_d`.
    pub fn subject_token(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for ch in self.0.chars() {
            match ch {
                '_' => out.push_str("__"),
                '.' => out.push_str("_d"),
                c => out.push(c),
            }
        }
        out
    }

    /// Inverse of [`Tag::subject_token`].
    pub fn from_subject_token(token: &str) -> Result<Tag, TagError> {
        let mut out = String::with_capacity(token.len());
        let mut chars = token.chars();
        while let Some(ch) = chars.next() {
            match ch {
                '_' => match chars.next() {
                    Some('_') => out.push('_'),
                    Some('d') => out.push('.'),
                    _ => return Err(TagError::BadToken(token.to_string())),
                },
                '.' => return Err(TagError::BadToken(token.to_string())),
                c => out.push(c),
            }
        }
        Tag::parse(&out).map_err(|_| TagError::BadToken(token.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Tag {
    type Err = TagError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tag::parse(s)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Tag::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A set of tags, kept sorted so its rendering is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagSet(BTreeSet<Tag>);

impl TagSet {
    pub fn new() -> Self {
        TagSet::default()
    }

    /// Parses tags from repeated values, each of which may be a comma list
    /// (`--capability a --capability b,c`). Empty items are errors.
    pub fn parse_lists<I, S>(values: I) -> Result<TagSet, TagError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for value in values {
            for item in value.as_ref().split(',') {
                set.insert(Tag::parse(item.trim())?);
            }
        }
        Ok(TagSet(set))
    }

    pub fn insert(&mut self, tag: Tag) -> bool {
        self.0.insert(tag)
    }
    pub fn contains(&self, tag: &Tag) -> bool {
        self.0.contains(tag)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.0.iter()
    }
    /// True when every tag of `self` is in `other`.
    pub fn is_subset(&self, other: &TagSet) -> bool {
        self.0.is_subset(&other.0)
    }
    /// Tags of `self` that `other` lacks.
    pub fn missing_from(&self, other: &TagSet) -> Vec<Tag> {
        self.0.difference(&other.0).cloned().collect()
    }
    /// Checks the [`MAX_TAGS`] bound, naming `field` in the error.
    pub fn check_bound(&self, field: &'static str) -> Result<(), TagError> {
        if self.0.len() > MAX_TAGS {
            return Err(TagError::TooMany {
                field,
                count: self.0.len(),
            });
        }
        Ok(())
    }

    /// Comma-joined rendering, as on the command line.
    pub fn joined(&self) -> String {
        self.0.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
    }
}

impl FromIterator<Tag> for TagSet {
    fn from_iter<T: IntoIterator<Item = Tag>>(iter: T) -> Self {
        TagSet(iter.into_iter().collect())
    }
}

impl fmt::Display for TagSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_real_tags() {
        for t in [
            "linux",
            "freebsd",
            "gpu",
            "image-render",
            "python3.12",
            "a",
            "x_y",
            "0day",
        ] {
            assert_eq!(Tag::parse(t).unwrap().as_str(), t);
        }
    }

    #[test]
    fn rejects_bad_tags_with_the_rule() {
        assert!(matches!(
            Tag::parse("gpu*"),
            Err(TagError::InvalidChar { ch: '*', .. })
        ));
        assert!(matches!(
            Tag::parse("a>"),
            Err(TagError::InvalidChar { ch: '>', .. })
        ));
        assert!(matches!(
            Tag::parse("a b"),
            Err(TagError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            Tag::parse("GPU"),
            Err(TagError::UpperCase { ch: 'G', .. })
        ));
        assert!(matches!(Tag::parse(""), Err(TagError::Empty { .. })));
        assert!(matches!(
            Tag::parse(&"a".repeat(65)),
            Err(TagError::TooLong { len: 65, .. })
        ));
        assert!(Tag::parse(&"a".repeat(64)).is_ok());
        assert!(matches!(Tag::parse(".x"), Err(TagError::BadStart { .. })));
        assert!(matches!(Tag::parse("-x"), Err(TagError::BadStart { .. })));
        assert!(matches!(Tag::parse("é"), Err(TagError::InvalidChar { .. })));
        let msg = Tag::parse("gpu*").unwrap_err().to_string();
        assert!(msg.starts_with("capability:"), "{msg}");
    }

    #[test]
    fn tokens_are_subject_safe_and_distinct() {
        let a = Tag::parse("python3.12").unwrap();
        let b = Tag::parse("python3_12").unwrap();
        let c = Tag::parse("python3_d12").unwrap();
        assert_eq!(a.subject_token(), "python3_d12");
        assert_eq!(b.subject_token(), "python3__12");
        assert_eq!(c.subject_token(), "python3__d12");
        assert_ne!(a.subject_token(), c.subject_token());
    }

    #[test]
    fn parse_lists_splits_commas() {
        let s = TagSet::parse_lists(["linux,gpu", "image-render"]).unwrap();
        assert_eq!(s.joined(), "gpu,image-render,linux");
        assert!(TagSet::parse_lists(["linux,"]).is_err());
    }

    #[test]
    fn sets_are_bounded_at_64() {
        let set = |n: usize| -> TagSet {
            (0..n)
                .map(|i| Tag::parse(&format!("t{i}")).unwrap())
                .collect()
        };
        assert!(set(MAX_TAGS).check_bound("capabilities").is_ok());
        assert!(matches!(
            set(MAX_TAGS + 1).check_bound("capabilities"),
            Err(TagError::TooMany {
                field: "capabilities",
                count: 65
            })
        ));
    }

    fn tag_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,63}"
    }

    proptest! {
        #[test]
        fn token_roundtrips(s in tag_strategy()) {
            let tag = Tag::parse(&s).unwrap();
            let token = tag.subject_token();
            prop_assert!(!token.contains('.') && !token.contains('*') && !token.contains('>'));
            prop_assert_eq!(Tag::from_subject_token(&token).unwrap(), tag);
        }

        #[test]
        fn token_is_injective(a in tag_strategy(), b in tag_strategy()) {
            let (ta, tb) = (Tag::parse(&a).unwrap(), Tag::parse(&b).unwrap());
            prop_assert_eq!(ta.subject_token() == tb.subject_token(), ta == tb);
        }
    }
}
