//! Business hours: a time zone and opening times per weekday, e.g.
//! `BUSINESS_HOURS_TZ=Europe/London`, `BUSINESS_HOURS="mon-fri 09:00-17:30; sat 10:00-14:00"`.
//! Without them the team counts as always open.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq)]
pub struct BusinessHours {
    tz: Tz,
    /// Monday first; `None` = closed all day.
    days: [Option<(NaiveTime, NaiveTime)>; 7],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusinessHoursError {
    #[error("unknown time zone `{0}`")]
    TimeZone(String),
    #[error("`{0}` is not of the form `mon-fri 09:00-17:00`")]
    Syntax(String),
    #[error("unknown weekday `{0}`")]
    Weekday(String),
    #[error("`{0}` closes before it opens")]
    Backwards(String),
}

impl BusinessHours {
    pub fn always_open() -> Self {
        let all_day = (
            NaiveTime::MIN,
            NaiveTime::from_hms_opt(23, 59, 59).expect("valid time"),
        );
        Self {
            tz: Tz::UTC,
            days: [Some(all_day); 7],
        }
    }

    pub fn parse(tz: &str, spec: &str) -> Result<Self, BusinessHoursError> {
        let tz: Tz = tz
            .trim()
            .parse()
            .map_err(|_| BusinessHoursError::TimeZone(tz.to_owned()))?;
        let mut days = [None; 7];
        for part in spec
            .split([';', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (day_spec, time_spec) = part
                .split_once(char::is_whitespace)
                .ok_or_else(|| BusinessHoursError::Syntax(part.to_owned()))?;
            let (open, close) = time_spec
                .trim()
                .split_once('-')
                .ok_or_else(|| BusinessHoursError::Syntax(part.to_owned()))?;
            let parse_time = |s: &str| {
                NaiveTime::parse_from_str(s.trim(), "%H:%M")
                    .map_err(|_| BusinessHoursError::Syntax(part.to_owned()))
            };
            let (open, close) = (parse_time(open)?, parse_time(close)?);
            if close <= open {
                return Err(BusinessHoursError::Backwards(part.to_owned()));
            }
            let (first, last) = match day_spec.split_once('-') {
                Some((a, b)) => (weekday(a)?, weekday(b)?),
                None => (weekday(day_spec)?, weekday(day_spec)?),
            };
            let mut d = first;
            loop {
                days[d.num_days_from_monday() as usize] = Some((open, close));
                if d == last {
                    break;
                }
                d = d.succ();
            }
        }
        Ok(Self { tz, days })
    }

    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz);
        let time = local.time();
        self.days[local.weekday().num_days_from_monday() as usize]
            .is_some_and(|(open, close)| time >= open && time < close)
    }

    /// The next opening after `at` in the business's time zone (`at` itself when open).
    pub fn next_opening(&self, at: DateTime<Utc>) -> Option<DateTime<Tz>> {
        if self.is_open(at) {
            return Some(at.with_timezone(&self.tz));
        }
        let local = at.with_timezone(&self.tz);
        for offset in 0..8 {
            let date = local.date_naive() + Duration::days(offset);
            let Some((open, _)) = self.days[date.weekday().num_days_from_monday() as usize] else {
                continue;
            };
            let Some(candidate) = self.tz.from_local_datetime(&date.and_time(open)).earliest()
            else {
                continue;
            };
            if candidate > local {
                return Some(candidate);
            }
        }
        None
    }

    /// "Monday 09:00": when replies will come, for the caller.
    pub fn describe_next_opening(&self, at: DateTime<Utc>) -> Option<String> {
        self.next_opening(at)
            .map(|t| t.format("%A %H:%M").to_string())
    }
}

fn weekday(s: &str) -> Result<Weekday, BusinessHoursError> {
    let s = s.trim().to_ascii_lowercase();
    let day = match s.get(..3).unwrap_or(&s) {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return Err(BusinessHoursError::Weekday(s)),
    };
    Ok(day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekday_hours_in_the_business_time_zone() {
        let h = BusinessHours::parse("America/New_York", "mon-fri 09:00-17:00; sat 10:00-14:00")
            .unwrap();
        // 2026-11-23 is a Monday. 14:00 UTC = 09:00 New York (EST).
        assert!(h.is_open(utc("2026-11-23T14:00:00Z")));
        assert!(!h.is_open(utc("2026-11-23T13:59:00Z")));
        assert!(
            !h.is_open(utc("2026-11-23T22:00:00Z")),
            "17:00 local is closed"
        );
        assert!(!h.is_open(utc("2026-11-29T16:00:00Z")), "Sunday");
        assert!(h.is_open(utc("2026-11-28T16:00:00Z")), "Saturday 11:00");
    }

    #[test]
    fn next_opening_skips_closed_days() {
        let h = BusinessHours::parse("Europe/London", "mon-fri 09:00-17:30").unwrap();
        // Friday 2026-11-27 18:00 London → Monday 09:00.
        let next = h
            .describe_next_opening(utc("2026-11-27T18:00:00Z"))
            .unwrap();
        assert_eq!(next, "Monday 09:00");
        let early = h
            .describe_next_opening(utc("2026-11-24T07:00:00Z"))
            .unwrap();
        assert_eq!(early, "Tuesday 09:00");
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(matches!(
            BusinessHours::parse("Mars/Olympus", "mon 09:00-17:00"),
            Err(BusinessHoursError::TimeZone(_))
        ));
        assert!(matches!(
            BusinessHours::parse("UTC", "funday 09:00-17:00"),
            Err(BusinessHoursError::Weekday(_))
        ));
        assert!(matches!(
            BusinessHours::parse("UTC", "mon 17:00-09:00"),
            Err(BusinessHoursError::Backwards(_))
        ));
        assert!(matches!(
            BusinessHours::parse("UTC", "mon"),
            Err(BusinessHoursError::Syntax(_))
        ));
    }

    #[test]
    fn always_open_is_open() {
        assert!(BusinessHours::always_open().is_open(utc("2026-11-29T03:00:00Z")));
    }
}
