//! Terminal output shared by the subcommands: styles, notes, tables, progress bars.
//!
//! Colours go through `anstream`, which strips them unless the stream is a terminal and
//! always when `NO_COLOR` is set, so pipes, files and CI logs get plain text. Progress bars
//! draw on stderr through `indicatif`, which hides them when stderr is not a terminal:
//! they never end up in captured output.

use std::time::Duration;

use anstyle::{AnsiColor, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub const PASS: Style = Style::new()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green)))
    .bold();
pub const FAIL: Style = Style::new()
    .fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red)))
    .bold();
pub const WARN: Style = Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow)));
pub const HEAD: Style = Style::new().bold();
pub const DIM: Style = Style::new().dimmed();
pub const SKIP: Style = WARN;

/// `text` in `style` (the escape codes are removed later by anstream where colours are off).
pub fn styled(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

/// Where human-readable notes go: stdout normally, stderr when stdout carries JSON, so
/// `warpnorm check --json | jq` always reads a clean document.
#[derive(Clone, Copy, Debug)]
pub struct Notes {
    pub json: bool,
}

impl Notes {
    pub fn say(&self, line: impl std::fmt::Display) {
        if self.json {
            anstream::eprintln!("{line}");
        } else {
            anstream::println!("{line}");
        }
    }
}

/// A progress bar of `len` steps on stderr, hidden when stderr is not a terminal.
pub fn progress(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} [{bar:32}] {pos}/{len} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

pub use warpnorm::tooling::table::Align;

/// A plain-text table with a styled header (see [`warpnorm::tooling::table::render`]).
pub fn table(header: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| styled(HEAD, h)).collect();
    warpnorm::tooling::table::render(&header, align, rows)
}

/// `1.5 GiB`, `80 MiB`, `512 B`: binary units, for memory and image sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration for humans: `850 us`, `12.3 ms`, `1.25 s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.0} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_headers_are_styled() {
        let t = table(&["name"], &[Align::Left], &[vec!["a".to_string()]]);
        assert_eq!(t.lines().next(), Some(styled(HEAD, "name").as_str()));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(80 << 30), "80.0 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(Duration::from_micros(850)), "850 us");
        assert_eq!(human_duration(Duration::from_millis(1250)), "1.25 s");
    }
}
