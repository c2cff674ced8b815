//! `strftime_now(format)`, the date helper Hugging Face exposes to chat templates
//! (Llama 3.x and Mistral templates put today's date in the system prompt).
//!
//! HF calls Python's `datetime.now().strftime(format)` in the server's local time
//! zone; we have no time-zone database, so this formats UTC. The directives are
//! glibc's (Python on Linux passes the format to the C library), including the
//! `-` flag that drops padding (`%-d`).

use std::time::{SystemTime, UNIX_EPOCH};

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// The template function: today's date and time in UTC.
pub(super) fn strftime_now(format: &str) -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0);
    format_utc(format, seconds)
}

/// A broken-down UTC time.
struct Civil {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 1..=366
    yearday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn from_unix(seconds: i64) -> Self {
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let yearday = (days - days_from_civil(year, 1, 1)) as u32 + 1;
        Civil {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
            yearday,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar,
/// counting in 400-year eras that start on March 1st so leap days fall at the end.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Formats `seconds` since the Unix epoch (UTC) with a strftime format.
/// Unknown directives are copied through, as glibc does.
fn format_utc(format: &str, seconds: i64) -> String {
    let time = Civil::from_unix(seconds);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.next_if_eq(&'-').is_some();
        let Some(directive) = chars.next() else {
            out.push('%');
            if unpadded {
                out.push('-');
            }
            break;
        };
        let number = |value: i64, width: usize, pad: char| {
            if unpadded {
                value.to_string()
            } else {
                let text = value.to_string();
                let fill: String =
                    std::iter::repeat_n(pad, width.saturating_sub(text.len())).collect();
                fill + &text
            }
        };
        let hour12 = match time.hour % 12 {
            0 => 12,
            h => h,
        };
        let piece = match directive {
            'Y' => time.year.to_string(),
            'y' => number(time.year.rem_euclid(100), 2, '0'),
            'C' => number(time.year.div_euclid(100), 2, '0'),
            'm' => number(i64::from(time.month), 2, '0'),
            'd' => number(i64::from(time.day), 2, '0'),
            'e' => number(i64::from(time.day), 2, ' '),
            'j' => number(i64::from(time.yearday), 3, '0'),
            'H' => number(i64::from(time.hour), 2, '0'),
            'k' => number(i64::from(time.hour), 2, ' '),
            'I' => number(i64::from(hour12), 2, '0'),
            'l' => number(i64::from(hour12), 2, ' '),
            'M' => number(i64::from(time.minute), 2, '0'),
            'S' => number(i64::from(time.second), 2, '0'),
            'p' => if time.hour < 12 { "AM" } else { "PM" }.to_owned(),
            'B' => MONTHS[time.month as usize - 1].to_owned(),
            'b' | 'h' => MONTHS[time.month as usize - 1][..3].to_owned(),
            'A' => WEEKDAYS[time.weekday as usize].to_owned(),
            'a' => WEEKDAYS[time.weekday as usize][..3].to_owned(),
            'w' => time.weekday.to_string(),
            'u' => if time.weekday == 0 { 7 } else { time.weekday }.to_string(),
            'F' => format_utc("%Y-%m-%d", seconds),
            'D' => format_utc("%m/%d/%y", seconds),
            'T' => format_utc("%H:%M:%S", seconds),
            'R' => format_utc("%H:%M", seconds),
            'c' => format_utc("%a %b %e %H:%M:%S %Y", seconds),
            'x' => format_utc("%m/%d/%y", seconds),
            'X' => format_utc("%H:%M:%S", seconds),
            's' => seconds.to_string(),
            'Z' => "UTC".to_owned(),
            'z' => "+0000".to_owned(),
            'n' => "\n".to_owned(),
            't' => "\t".to_owned(),
            '%' => "%".to_owned(),
            other => {
                if unpadded {
                    format!("%-{other}")
                } else {
                    format!("%{other}")
                }
            }
        };
        out.push_str(&piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_glibc_strftime() {
        // 2024-07-26 09:05:03 UTC, a Friday, day 208. Expected strings are Python's
        // datetime(2024, 7, 26, 9, 5, 3).strftime(...) on Linux.
        let t = 1_721_984_703;
        assert_eq!(format_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(format_utc("%Y-%m-%d", t), "2024-07-26");
        assert_eq!(format_utc("%B %d, %Y", t), "July 26, 2024");
        assert_eq!(format_utc("%A %j %H:%M:%S %p", t), "Friday 208 09:05:03 AM");
        assert_eq!(format_utc("%-d/%-m %I%%", t), "26/7 09%");
        assert_eq!(format_utc("%e|%k|%l|%y", t), "26| 9| 9|24");
        assert_eq!(format_utc("%c", t), "Fri Jul 26 09:05:03 2024");
        assert_eq!(format_utc("%Q and trailing %", t), "%Q and trailing %");
    }

    #[test]
    fn calendar_round_trips_across_leap_years_and_the_epoch() {
        for days in [-1, 0, 59, 60, 365, 11_016, 19_782, 19_783, 20_000, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "day {days}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        // 2000-02-29 (a 400-year leap day).
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(Civil::from_unix(951_782_400).yearday, 60);
    }
}
