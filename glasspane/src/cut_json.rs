//! Reading a JSON line the line reader had to cut.
//!
//! An agent line longer than the reader's limit keeps only its first bytes.
//! Dropping such a line to `raw` would lose what matters most: pi's
//! `agent_end` carries every message of the run, and a tool result of a few
//! MiB ends its tool call. So a cut object is *closed* instead: the prefix
//! up to its last complete member, an open string value ended where the cut
//! fell, and every open array and object closed. The result is valid JSON
//! holding every field that came before the cut (the `type`, ids, flags) and
//! the beginning of the long one.

use serde_json::Value;

use crate::line_reader::Line;

/// The line as a JSON object: parsed whole, or, for a cut line, closed at
/// the cut (see the module doc). `None` when it is not an object.
pub fn parse_object(line: &Line) -> Option<Value> {
    let parsed = if line.cut {
        close(&line.text).and_then(|s| serde_json::from_str(&s).ok())
    } else {
        serde_json::from_str(&line.text).ok()
    };
    parsed.filter(Value::is_object)
}

#[derive(Clone, Copy)]
enum Open {
    /// An object; true while a key (not a value) comes next.
    Object {
        want_key: bool,
    },
    Array,
}

fn closers(stack: &[Open]) -> String {
    stack
        .iter()
        .rev()
        .map(|o| match o {
            Open::Object { .. } => '}',
            Open::Array => ']',
        })
        .collect()
}

/// `prefix`, cut inside a JSON object, made into a complete JSON text, or
/// `None` when it does not start as an object.
pub fn close(prefix: &str) -> Option<String> {
    let bytes = prefix.as_bytes();
    let mut stack: Vec<Open> = Vec::new();
    // The last place the text could end, with the closers it needs there.
    let mut safe: Option<(usize, String)> = None;
    let mut in_string = false;
    let mut string_is_key = false;
    let mut escape_at: Option<usize> = None;
    let mut unicode_left = 0u8;
    let mut in_scalar = false;
    let mut started = false;

    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if unicode_left > 0 {
                unicode_left -= 1;
                if unicode_left == 0 {
                    escape_at = None;
                }
            } else if escape_at.is_some() {
                if b == b'u' {
                    unicode_left = 4;
                } else {
                    escape_at = None;
                }
            } else if b == b'\\' {
                escape_at = Some(i);
            } else if b == b'"' {
                in_string = false;
                if !string_is_key {
                    safe = Some((i + 1, closers(&stack)));
                }
            }
            continue;
        }
        if in_scalar {
            if matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace() {
                in_scalar = false;
                safe = Some((i, closers(&stack)));
            } else {
                continue;
            }
        }
        match b {
            b'{' | b'[' => {
                if !started && b != b'{' {
                    return None;
                }
                started = true;
                stack.push(if b == b'{' {
                    Open::Object { want_key: true }
                } else {
                    Open::Array
                });
                safe = Some((i + 1, closers(&stack)));
            }
            b'}' | b']' => {
                stack.pop();
                if stack.is_empty() {
                    // Complete after all: nothing to close.
                    return Some(prefix[..=i].to_owned());
                }
                safe = Some((i + 1, closers(&stack)));
            }
            b'"' => {
                in_string = true;
                string_is_key = matches!(stack.last(), Some(Open::Object { want_key: true }));
            }
            b':' => {
                if let Some(Open::Object { want_key }) = stack.last_mut() {
                    *want_key = false;
                }
            }
            b',' => {
                if let Some(Open::Object { want_key }) = stack.last_mut() {
                    *want_key = true;
                }
            }
            b if b.is_ascii_whitespace() => {}
            _ if !started => return None,
            _ => in_scalar = true,
        }
    }
    if !started {
        return None;
    }
    if in_string && !string_is_key {
        // End the open string value at the cut, without a half escape.
        let end = escape_at.unwrap_or(bytes.len());
        return Some(format!("{}\"{}", &prefix[..end], closers(&stack)));
    }
    // A key, a `:` without its value, or a scalar that may be incomplete:
    // end after the last complete member.
    safe.map(|(at, closers)| format!("{}{}", prefix[..at].trim_end(), closers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(prefix: &str) -> Value {
        let text = close(prefix).unwrap_or_else(|| panic!("not closed: {prefix}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn an_open_string_value_ends_at_the_cut() {
        let v = closed(
            r#"{"type":"tool_execution_end","toolCallId":"t1","result":{"content":[{"type":"text","text":"aaaa"#,
        );
        assert_eq!(v["type"], "tool_execution_end");
        assert_eq!(v["toolCallId"], "t1");
        assert_eq!(v["result"]["content"][0]["text"], "aaaa");
    }

    #[test]
    fn a_half_key_or_value_is_dropped() {
        assert_eq!(
            closed(r#"{"type":"a","ke"#),
            serde_json::json!({"type":"a"})
        );
        assert_eq!(
            closed(r#"{"type":"a","key":"#),
            serde_json::json!({"type":"a"})
        );
        assert_eq!(
            closed(r#"{"type":"a","n":12"#),
            serde_json::json!({"type":"a"})
        );
        assert_eq!(
            closed(r#"{"type":"a","n":12,"#),
            serde_json::json!({"type":"a","n":12})
        );
        assert_eq!(
            closed(r#"{"type":"a","l":[1,2,tr"#),
            serde_json::json!({"type":"a","l":[1,2]})
        );
        assert_eq!(
            closed(r#"{"type":"a","o":{"#),
            serde_json::json!({"type":"a","o":{}})
        );
    }

    #[test]
    fn escapes_are_never_split() {
        assert_eq!(closed(r#"{"t":"ab\"#)["t"], "ab");
        assert_eq!(closed(r#"{"t":"ab\u00"#)["t"], "ab");
        assert_eq!(closed(r#"{"t":"ab\u00e9c"#)["t"], "abéc");
        assert_eq!(closed(r#"{"t":"a\\"#)["t"], "a\\");
        assert_eq!(closed(r#"{"t":"a\"b"#)["t"], "a\"b");
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let v = closed(r#"{"type":"x","s":"}]{[","more":["a","#);
        assert_eq!(v["s"], "}]{[");
        assert_eq!(v["more"], serde_json::json!(["a"]));
    }

    #[test]
    fn not_an_object_is_refused() {
        assert!(close("hello {").is_none());
        assert!(close("[1,2").is_none());
        assert!(close("").is_none());
        assert!(close("   ").is_none());
    }

    #[test]
    fn a_complete_object_is_kept_as_it_is() {
        assert_eq!(close(r#"{"a":1} trailing"#).as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn any_cut_of_a_real_line_closes_to_valid_json() {
        let line = r#"{"type":"agent_end","messages":[{"role":"user","content":[{"type":"text","text":"fix \"it\" \u00e9 now"}]},{"role":"assistant","content":[],"stopReason":"stop","usage":{"input":10,"cost":{"total":0.5}}},null,true,-1.5e3]}"#;
        for cut in 1..line.len() {
            if !line.is_char_boundary(cut) {
                continue;
            }
            let text = close(&line[..cut]).unwrap_or_else(|| panic!("cut at {cut}"));
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("cut at {cut}: {text}: {e}"));
            assert!(v.is_object(), "cut at {cut}");
            if cut > r#"{"type":"agent_end""#.len() {
                assert_eq!(v["type"], "agent_end", "cut at {cut}");
            }
        }
    }
}
