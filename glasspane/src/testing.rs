//! Test helpers: feed a fixture file through a parser.

use broker::messages::session::Event;

use crate::line_reader::Line;
use crate::parser::Parser;

/// Feeds `tests/fixtures/<name>` line by line to `parser`.
pub fn run_fixture<P: Parser>(name: &str, mut parser: P) -> (Vec<Event>, P) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    for l in text.lines() {
        parser.line(
            Line {
                text: l.to_owned(),
                len: l.len(),
                cut: false,
            },
            &mut out,
        );
    }
    (out, parser)
}
