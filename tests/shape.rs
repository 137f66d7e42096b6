//! The code keeps the shape the team agreed on (issue 18): no file in
//! `src/` longer than 600 lines outside its `#[cfg(test)]` module, and no
//! function longer than 80 lines. A file or function that grows past that
//! fails here, with its name, instead of drifting back unnoticed.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The change in brace depth on a line, outside strings, chars and comments.
fn depth_change(line: &str, in_string: &mut bool) -> i64 {
    let chars: Vec<char> = line.chars().collect();
    let mut depth = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if *in_string {
            match c {
                '\\' => i += 1,
                '"' => *in_string = false,
                _ => {}
            }
        } else {
            match c {
                '/' if chars.get(i + 1) == Some(&'/') => break,
                '"' => *in_string = true,
                // '{' and '}' as char literals.
                '\'' if chars.get(i + 2) == Some(&'\'') => i += 2,
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    depth
}

/// The lines of a file outside its `#[cfg(test)]` modules.
fn outside_tests(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let is_test_module = lines[i].trim() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.ends_with('{'));
        if !is_test_module {
            kept.push(lines[i]);
            i += 1;
            continue;
        }
        let (mut depth, mut in_string) = (0, false);
        i += 1;
        while i < lines.len() {
            depth += depth_change(lines[i], &mut in_string);
            i += 1;
            if depth == 0 {
                break;
            }
        }
    }
    kept
}

/// Each function's name and length in lines, `fn` line to closing brace.
fn functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let Some(at) = code.find("fn ") else {
            continue;
        };
        let before = &code[..at];
        let is_declaration = before.split_whitespace().all(|word| {
            [
                "pub",
                "pub(crate)",
                "pub(super)",
                "async",
                "const",
                "unsafe",
            ]
            .contains(&word)
        });
        if !is_declaration || code.starts_with("//") {
            continue;
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut in_string, mut opened) = (0, false, false);
        for (end, line) in lines.iter().enumerate().skip(start) {
            depth += depth_change(line, &mut in_string);
            opened |= line.contains('{');
            if !opened && line.trim_end().ends_with(';') {
                break; // A declaration without a body.
            }
            if opened && depth <= 0 {
                found.push((name.clone(), start + 1, end - start + 1));
                break;
            }
        }
    }
    found
}

#[test]
fn no_file_or_function_outgrows_the_agreed_shape() {
    let _deadline = common::deadline(Duration::from_secs(30));
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let lines = outside_tests(&text);
        if lines.len() > MAX_FILE_LINES {
            problems.push(format!(
                "{}: {} lines outside tests",
                file.display(),
                lines.len()
            ));
        }
        for (name, line, length) in functions(&lines) {
            if length > MAX_FN_LINES {
                problems.push(format!(
                    "{}:{line}: fn {name} is {length} lines",
                    file.display()
                ));
            }
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_measure_sees_functions_and_skips_test_modules() {
    let _deadline = common::deadline(Duration::from_secs(30));
    let text = "fn a() {\n    let s = \"}\";\n    let c = '{';\n}\n\
                #[cfg(test)]\nmod tests {\n    fn b() {\n    }\n}\n\
                pub(crate) fn c(x: u8) -> u8 {\n    x // }\n}\n";
    let lines = outside_tests(text);
    assert_eq!(lines.len(), 7);
    let found = functions(&lines);
    assert_eq!(found, [("a".to_owned(), 1, 4), ("c".to_owned(), 5, 3)]);
}
