//! Plain-text tables, for the command's reports and the benchmarks' summaries.

/// Column alignment in [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: header, a rule, one line per row, columns padded to their widest
/// cell (`align`ed, left where `align` has no entry). Cells may carry ANSI style escapes:
/// they do not count towards the width.
pub fn render<H: AsRef<str>>(header: &[H], align: &[Align], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| visible_len(h.as_ref())).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(visible_len(cell));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let parts: Vec<String> = cells
            .zip(&width)
            .zip(align.iter().chain(std::iter::repeat(&Align::Left)))
            .map(|((cell, &w), a)| {
                let pad = " ".repeat(w.saturating_sub(visible_len(cell)));
                match a {
                    Align::Left => format!("{cell}{pad}"),
                    Align::Right => format!("{pad}{cell}"),
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
    let mut out = String::new();
    for cells in [
        header.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        rule.iter().map(String::as_str).collect(),
    ]
    .into_iter()
    .chain(rows.iter().map(|r| r.iter().map(String::as_str).collect()))
    {
        out += &line(&mut cells.into_iter());
        out.push('\n');
    }
    out
}

/// Characters of `s` outside ANSI escape sequences.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_ignore_escapes() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["\x1b[32mlong\x1b[0m".to_string(), "100".to_string()],
        ];
        let t = render(&["name", "n"], &[Align::Left, Align::Right], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[..3], ["name    n", "----  ---", "a       1"]);
        assert_eq!(lines[3], "\x1b[32mlong\x1b[0m  100");
    }
}
