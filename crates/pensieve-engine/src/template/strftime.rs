//! `strftime_now(format)`, the date helper Hugging Face exposes to chat templates
//! (Llama 3.x and Mistral templates put today's date in the system prompt).
//!
//! HF calls Python's `datetime.now().strftime(format)` in local time; chrono's
//! strftime directives are the same, including the `-` flag that drops padding (`%-d`).

use std::fmt::Write;

use chrono::{DateTime, Local, TimeZone};

/// The template function: now, in the server's local time.
pub(super) fn strftime_now(format: &str) -> String {
    format_time(&Local::now(), format)
}

/// Format like Python's strftime; a format chrono cannot read is returned as written,
/// as Python does with directives it does not know.
pub(super) fn format_time<Tz: TimeZone>(time: &DateTime<Tz>, format: &str) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let mut out = String::new();
    match write!(out, "{}", time.format(format)) {
        Ok(()) => out,
        Err(_) => format.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn formats_like_python_strftime() {
        // 2024-07-26 09:05:03 UTC, a Friday, day 208. Expected strings are Python's
        // datetime(2024, 7, 26, 9, 5, 3).strftime(...) on Linux.
        let t = Utc.timestamp_opt(1_721_984_703, 0).unwrap();
        assert_eq!(format_time(&t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(format_time(&t, "%Y-%m-%d"), "2024-07-26");
        assert_eq!(format_time(&t, "%B %d, %Y"), "July 26, 2024");
        assert_eq!(
            format_time(&t, "%A %j %H:%M:%S %p"),
            "Friday 208 09:05:03 AM"
        );
        assert_eq!(format_time(&t, "%-d/%-m %I%%"), "26/7 09%");
        assert_eq!(format_time(&t, "%e|%k|%l|%y"), "26| 9| 9|24");
    }

    #[test]
    fn an_unreadable_format_is_returned_as_is() {
        let t = Utc.timestamp_opt(0, 0).unwrap();
        assert_eq!(format_time(&t, "%Q and trailing %"), "%Q and trailing %");
    }
}
