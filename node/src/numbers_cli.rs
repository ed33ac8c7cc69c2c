//! `tsunagu numbers import FILE.csv`: provisions tracking numbers from a spreadsheet
//! through the node's API, as the operator whose API key is in `TSUNAGU_API_KEY` (a
//! key on the command line would show in `ps`).
//!
//! The file is CSV (RFC 4180: commas, double quotes, CRLF or LF; a UTF-8 byte-order
//! mark, as spreadsheets write, is skipped) with a header row naming its columns:
//!
//! - `number`, `advertiser_id`: as in `POST /v1/numbers`;
//! - `destinations`: the phones to forward to, in order, separated by `;`, each
//!   `NUMBER` or `NUMBER:RING_SECONDS` (`0311112222:20;0311113333`);
//! - `options` (optional): a JSON object with any other field of `POST /v1/numbers`
//!   (`{"recording": {"mode": "both"}}`), empty for none.
//!
//! All or nothing, as far as the API allows: every row is first checked by the node
//! (`POST /v1/numbers?dry_run=true`: the same checks as a creation, nothing written),
//! and a file with any bad row creates nothing: every problem is printed with its line.
//! Then the rows are created in order. Exit status: 0 every number created; 1 the file
//! or its rows were refused (nothing created), or a creation failed after the check
//! (another client took the number meanwhile: the numbers before it were created, and
//! it says how many); 2 the node could not be asked, or answered other than about the
//! rows (no key or a refused one, configuration, unreachable, overloaded, store down).

use crate::api_client::{api_address, ask, error_message, load_config, printable, ClientError};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Larger files are not a number plan (10,000 rows of a few hundred bytes).
const MAX_FILE: u64 = 8 << 20;
const MAX_ROWS: usize = 10_000;

/// One row as the API takes it, with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    pub number: Value,
}

/// `tsunagu numbers import FILE`: `config` is the node's configuration (none: built-in
/// defaults).
pub fn import(file: &Path, config: Option<PathBuf>) -> ExitCode {
    let fail = |e: String| {
        eprintln!("tsunagu numbers import: {e}");
        ExitCode::from(2)
    };
    let key = match std::env::var("TSUNAGU_API_KEY") {
        Ok(k) if !k.trim().is_empty() => k.trim().to_string(),
        _ => return fail("set TSUNAGU_API_KEY to the operator's API key".into()),
    };
    let addr = match load_config(config.as_deref()) {
        Ok(c) => api_address(c.api.listen),
        Err(e) => return fail(format!("configuration error:\n{e}")),
    };
    let text = match read_bounded(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tsunagu numbers import: {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let rows = match rows(&text) {
        Ok(rows) => rows,
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!(
                "nothing imported: {} problem(s) in the file",
                problems.len()
            );
            return ExitCode::from(1);
        }
    };
    // A spreadsheet drops a number's leading zero when the column is numeric: such a
    // number is valid, and no call will ever match it (carriers send 0-prefixed
    // national numbers). Said, not refused.
    for row in &rows {
        let n = row.number["number"].as_str().unwrap_or_default();
        if !n.starts_with('0') {
            eprintln!(
                "{}: line {}: warning: number {} does not start with 0 (did a spreadsheet drop it?)",
                file.display(),
                row.line,
                crate::api_client::printable(n, 40)
            );
        }
    }
    let send = |row: &Row, path: &str| -> Result<(u16, String), ClientError> {
        let body = serde_json::to_vec(&row.number).unwrap_or_default();
        let (code, answer) = ask(addr, &key, "POST", path, Some(&body))?;
        Ok((code, error_message(&answer, 300)))
    };
    // Checked by the node, every row, before anything is written.
    let mut problems = Vec::new();
    for row in &rows {
        match send(row, "/v1/numbers?dry_run=true") {
            Ok((200, _)) => {}
            // What the node says about the row itself.
            Ok((code @ (400 | 404 | 409 | 422), why)) => {
                problems.push(format!("line {}: {code}: {why}", row.line))
            }
            Ok((201, _)) => {
                return fail(format!(
                    "the node created line {}'s number while asked only to check it: it does not know dry_run (an older node?); numbers of the lines before may have been created too",
                    row.line
                ))
            }
            // About the request, not the row: the same for every row, said once.
            Ok((code, why)) => return fail(format!("the node answered {code}: {why}")),
            Err(e) => return fail(e.to_string()),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{}: {p}", file.display());
        }
        eprintln!(
            "nothing imported: {} of {} rows refused",
            problems.len(),
            rows.len()
        );
        return ExitCode::from(1);
    }
    // Created in the file's order; a row the node refuses now (a number another client
    // took since the check, the operator's number cap reached: the dry runs each saw
    // room for one more) or an answer about the request takes back what this import
    // created, so that a failed import leaves nothing half done (a review found ten
    // of a hundred rows created at the cap).
    let mut created: Vec<&str> = Vec::new();
    for row in &rows {
        let failure = match send(row, "/v1/numbers") {
            Ok((201, _)) => {
                created.push(row.number["number"].as_str().unwrap_or_default());
                continue;
            }
            Ok((code @ (400 | 404 | 409 | 422), why)) => {
                eprintln!("{}: line {}: {code}: {why}", file.display(), row.line);
                1
            }
            Ok((code, why)) => {
                eprintln!("the node answered {code} for line {}: {why}", row.line);
                // Not a refusal of the row (a 5xx, a 408): the number may have been
                // created before the answer went wrong, and is taken back with the
                // rest (it stayed, while the import said nothing was; a review).
                if !(400..500).contains(&code) || code == 408 {
                    created.push(row.number["number"].as_str().unwrap_or_default());
                }
                2
            }
            Err(e) => {
                // The request may have been done before the answer was lost: its
                // number (absent at the check) is taken back with the rest.
                eprintln!(
                    "line {} (its number may or may not have been created): {e}",
                    row.line
                );
                created.push(row.number["number"].as_str().unwrap_or_default());
                2
            }
        };
        let kept = take_back(&created, |n| {
            let path = format!("/v1/numbers/{}", crate::api_client::path_segment(n));
            matches!(ask(addr, &key, "DELETE", &path, None), Ok((204 | 404, _)))
        });
        if kept.is_empty() {
            eprintln!(
                "nothing imported: what this import created before line {} ({} number(s)) was deleted again",
                row.line,
                created.len()
            );
        } else {
            eprintln!(
                "{} of {} numbers could not be deleted again and stay: {}",
                kept.len(),
                created.len(),
                kept.join(", ")
            );
        }
        return ExitCode::from(failure);
    }
    println!("{} numbers imported", rows.len());
    ExitCode::SUCCESS
}

/// Deletes `created` (newest first) with `delete`; the numbers it could not delete.
fn take_back<'a>(created: &[&'a str], mut delete: impl FnMut(&str) -> bool) -> Vec<&'a str> {
    created
        .iter()
        .rev()
        .filter(|n| !delete(n))
        .copied()
        .collect()
}

fn read_bounded(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text (save the sheet as CSV UTF-8)".into())
}

/// The file's rows as API bodies, or every problem found, each with its line.
pub fn rows(text: &str) -> Result<Vec<Row>, Vec<String>> {
    let records = records(text).map_err(|e| vec![e])?;
    let mut records = records.into_iter();
    let Some((_, header)) = records.next() else {
        return Err(vec![
            "empty file: a header row (number,advertiser_id,destinations[,options]) is needed"
                .into(),
        ]);
    };
    let columns: Vec<String> = header
        .iter()
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let mut problems = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        // A nameless column (a stray cell right of the table) is ignored while it
        // stays empty.
        if c.is_empty() {
            continue;
        }
        if !["number", "advertiser_id", "destinations", "options"].contains(&c.as_str()) {
            problems.push(format!("line 1: unknown column {:?}", printable(c, 40)));
        } else if columns[..i].contains(c) {
            problems.push(format!("line 1: column {c} twice"));
        }
    }
    for needed in ["number", "advertiser_id", "destinations"] {
        if !columns.iter().any(|c| c == needed) {
            problems.push(format!("line 1: no {needed} column"));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut rows = Vec::new();
    let mut seen = std::collections::HashMap::new();
    // Cells a row may leave out at its end: `options` and nameless columns.
    let needed = 1 + columns
        .iter()
        .rposition(|c| ["number", "advertiser_id", "destinations"].contains(&c.as_str()))
        .unwrap_or(0);
    for (line, mut fields) in records {
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if fields.len() < needed || fields.len() > columns.len() {
            problems.push(format!(
                "line {line}: {} fields for {} columns",
                fields.len(),
                columns.len()
            ));
            continue;
        }
        fields.resize(columns.len(), String::new());
        if columns
            .iter()
            .zip(&fields)
            .any(|(c, f)| c.is_empty() && !f.trim().is_empty())
        {
            problems.push(format!(
                "line {line}: a value under a column without a name"
            ));
            continue;
        }
        let cell = |name: &str| {
            let i = columns.iter().position(|c| c == name);
            i.map(|i| fields[i].trim()).unwrap_or_default()
        };
        match row(
            cell("number"),
            cell("advertiser_id"),
            cell("destinations"),
            cell("options"),
        ) {
            Ok(number) => {
                let n = cell("number").to_string();
                if let Some(first) = seen.insert(n.clone(), line) {
                    let shown = crate::api_client::printable(&n, 40);
                    problems.push(format!(
                        "line {line}: number {shown} is on line {first} too"
                    ));
                }
                rows.push(Row { line, number });
            }
            Err(e) => problems.push(format!("line {line}: {e}")),
        }
        if rows.len() > MAX_ROWS {
            return Err(vec![format!("more than {MAX_ROWS} rows: split the file")]);
        }
    }
    if rows.is_empty() && problems.is_empty() {
        problems.push("no rows under the header".into());
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// One row's API body.
fn row(number: &str, advertiser: &str, destinations: &str, options: &str) -> Result<Value, String> {
    if number.is_empty() {
        return Err("number is empty".into());
    }
    if advertiser.is_empty() {
        return Err("advertiser_id is empty".into());
    }
    let mut body = if options.is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(options) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err("options is not a JSON object".into()),
            Err(e) => return Err(format!("options is not JSON: {e}")),
        }
    };
    for own in ["number", "advertiser_id", "destinations"] {
        if body.contains_key(own) {
            return Err(format!("options sets {own}: it has its own column"));
        }
    }
    let mut list = Vec::new();
    for entry in destinations
        .split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (phone, ring) = match entry.split_once(':') {
            Some((p, r)) => {
                let ring: u32 = r
                    .trim()
                    .parse()
                    .map_err(|_| format!("destination {entry:?}: ring seconds are not a number"))?;
                (p.trim(), Some(ring))
            }
            None => (entry, None),
        };
        list.push(match ring {
            Some(r) => json!({"number": phone, "ring_seconds": r}),
            None => json!({"number": phone}),
        });
    }
    if list.is_empty() {
        return Err("no destinations".into());
    }
    body.insert("number".into(), json!(number));
    body.insert("advertiser_id".into(), json!(advertiser));
    body.insert("destinations".into(), Value::Array(list));
    Ok(Value::Object(body))
}

/// At most this many fields in a record (the columns are four).
const MAX_FIELDS: usize = 32;

/// RFC 4180 records with the line each starts on; a quoted field may hold commas,
/// doubled quotes and line breaks. A UTF-8 byte-order mark at the start is skipped; a
/// lone CR ends a line as LF and CRLF do (old Mac sheets). Bounded: at most
/// [`MAX_ROWS`] + 1 lines of records and [`MAX_FIELDS`] fields each.
pub fn records(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut line, mut start) = (1, 1);
    // In a quoted field; just after its closing quote.
    let (mut quoted, mut closed) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => (quoted, closed) = (false, true),
                c => {
                    if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !closed => quoted = true,
            ',' => {
                fields.push(std::mem::take(&mut field));
                closed = false;
                if fields.len() >= MAX_FIELDS {
                    return Err(format!("line {start}: more than {MAX_FIELDS} fields"));
                }
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                fields.push(std::mem::take(&mut field));
                out.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
                closed = false;
                if out.len() > MAX_ROWS + 1 {
                    return Err(format!("more than {MAX_ROWS} rows: split the file"));
                }
            }
            '"' => return Err(format!("line {line}: a quote inside an unquoted field")),
            _ if closed => {
                return Err(format!(
                    "line {line}: text after a quoted field's closing quote"
                ))
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {start}: a quoted field is not closed"));
    }
    if !field.is_empty() || !fields.is_empty() || closed {
        fields.push(field);
        out.push((start, fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: what the node deletes (true) in the order asked, and what stays.
    #[test]
    fn what_was_created_is_taken_back_newest_first() {
        let created = ["a", "b", "c"];
        let mut asked = Vec::new();
        let kept = take_back(&created, |n| {
            asked.push(n.to_string());
            n != "b"
        });
        assert_eq!(asked, ["c", "b", "a"]);
        assert_eq!(kept, ["b"]);
        assert!(take_back(&[], |_| false).is_empty());
    }

    #[test]
    fn csv_records() {
        let cases: &[(&str, Result<Vec<(usize, Vec<&str>)>, &str>)] = &[
            (
                "a,b\n1,2\n",
                Ok(vec![(1, vec!["a", "b"]), (2, vec!["1", "2"])]),
            ),
            (
                "a,b\r\n1,2",
                Ok(vec![(1, vec!["a", "b"]), (2, vec!["1", "2"])]),
            ),
            ("\u{feff}a\n", Ok(vec![(1, vec!["a"])])),
            (
                "a,\"x, \"\"y\"\"\nz\",c\nn\n",
                Ok(vec![(1, vec!["a", "x, \"y\"\nz", "c"]), (3, vec!["n"])]),
            ),
            ("a,,\n", Ok(vec![(1, vec!["a", "", ""])])),
            ("", Ok(vec![])),
            ("a\"b\n", Err("line 1: a quote inside an unquoted field")),
            ("\"abc\"def\n", Err("line 1: text after a quoted field's closing quote")),
            ("a,b\r1,2\r", Ok(vec![(1, vec!["a", "b"]), (2, vec!["1", "2"])])),
            ("\"x\"", Ok(vec![(1, vec!["x"])])),
            ("a,\"\"", Ok(vec![(1, vec!["a", ""])])),
            ("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33\n", Err("line 1: more than 32 fields")),
            ("a\n\"open\n", Err("line 2: a quoted field is not closed")),
        ];
        for (text, want) in cases {
            let want = want
                .clone()
                .map(|v| {
                    v.into_iter()
                        .map(|(l, f)| (l, f.into_iter().map(String::from).collect()))
                        .collect::<Vec<_>>()
                })
                .map_err(String::from);
            assert_eq!(records(text), want, "{text:?}");
        }
    }

    #[test]
    fn rows_and_their_problems() {
        let ok = rows(
            "Number,advertiser_id,destinations,options\n\
             0501234567,adv_1,0311112222:20;0311113333,\n\
             \n\
             0501234568,adv_1,0311114444,\"{\"\"recording\"\": {\"\"mode\"\": \"\"both\"\"}}\"\n",
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![
                Row {
                    line: 2,
                    number: json!({"number": "0501234567", "advertiser_id": "adv_1",
                        "destinations": [{"number": "0311112222", "ring_seconds": 20}, {"number": "0311113333"}]}),
                },
                Row {
                    line: 4,
                    number: json!({"number": "0501234568", "advertiser_id": "adv_1",
                        "destinations": [{"number": "0311114444"}], "recording": {"mode": "both"}}),
                },
            ]
        );
        // A stray empty column right of the table, and rows that leave the optional
        // `options` out.
        let lenient =
            rows("number,advertiser_id,destinations,options,,\n1,a,3\n2,a,4,,,\n").unwrap();
        assert_eq!(lenient.len(), 2);
        assert_eq!(
            lenient[0].number,
            json!({"number": "1", "advertiser_id": "a", "destinations": [{"number": "3"}]})
        );
        let many = "number,advertiser_id,destinations\n".to_string() + &"\n".repeat(MAX_ROWS + 1);
        assert_eq!(
            rows(&many).unwrap_err(),
            vec![format!("more than {MAX_ROWS} rows: split the file")]
        );
        let bad: &[(&str, &str)] = &[
            ("", "empty file"),
            ("number,advertiser_id\n", "no destinations column"),
            (
                "number,advertiser_id,destinations,colour\n",
                "unknown column \"colour\"",
            ),
            (
                "number,number,advertiser_id,destinations\n",
                "column number twice",
            ),
            (
                "number,advertiser_id,destinations\n",
                "no rows under the header",
            ),
            (
                "number,advertiser_id,destinations\n1,a\n",
                "line 2: 2 fields for 3 columns",
            ),
            (
                "number,advertiser_id,destinations\n,a,3\n",
                "line 2: number is empty",
            ),
            (
                "number,advertiser_id,destinations\n1,,3\n",
                "line 2: advertiser_id is empty",
            ),
            (
                "number,advertiser_id,destinations\n1,a,\n",
                "line 2: no destinations",
            ),
            (
                "number,advertiser_id,destinations\n1,a,3:x\n",
                "ring seconds are not a number",
            ),
            (
                "number,advertiser_id,destinations,options\n1,a,3,[1]\n",
                "options is not a JSON object",
            ),
            (
                "number,advertiser_id,destinations,options\n1,a,3,{\n",
                "options is not JSON",
            ),
            (
                "number,advertiser_id,destinations,options\n1,a,3,\"{\"\"number\"\": 2}\"\n",
                "options sets number",
            ),
            (
                "number,advertiser_id,destinations\n1,a,3\n1,a,4\n",
                "line 3: number 1 is on line 2 too",
            ),
            (
                "number,advertiser_id,destinations,,\n1,a,3,,x\n",
                "line 2: a value under a column without a name",
            ),
            (
                "number,advertiser_id,destinations,options\n1,a\n",
                "line 2: 2 fields for 4 columns",
            ),
        ];
        for (text, want) in bad {
            let problems = rows(text).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{text:?}: {problems:?}"
            );
        }
    }
}
