//! `CustomerId`: the one key every channel uses for a customer.
//!
//! Phone customers are keyed by a canonical E.164 number (`+14255550123`), whatever form the
//! number arrived in: plain E.164, an ACS raw id (`4:+14255550123`), a WhatsApp id
//! (`14255550123`), or something a human typed (`+1 (425) 555-0123`). Customers who hide their
//! number on WhatsApp are keyed by their business-scoped user id (`bsuid:US.1349…`), and callers
//! from non-phone ACS identities by their raw id (`acs:8:acs:…`).
//!
//! `Display` and `Debug` mask the number, so a `CustomerId` can be logged safely; `as_str` gives
//! the canonical value for storage keys and wire formats.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// E.164 allows at most 15 digits; anything shorter than 7 is not a dialable subscriber number.
const MIN_DIGITS: usize = 7;
const MAX_DIGITS: usize = 15;
const BSUID_PREFIX: &str = "bsuid:";
const RAW_PREFIX: &str = "acs:";

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerIdError {
    #[error("customer id is empty")]
    Empty,
    #[error("customer id contains `{0}`, which is not part of a phone number")]
    InvalidCharacter(char),
    #[error("phone number has {0} digits; E.164 allows {MIN_DIGITS} to {MAX_DIGITS}")]
    BadLength(usize),
    #[error("phone number cannot start with 0 after the country code prefix")]
    LeadingZero,
    #[error("business-scoped user id `{0}` is not of the form CC.alphanumeric")]
    BadBsuid(String),
    #[error("`{0}` is not a phone number, a business-scoped user id or an ACS identity")]
    Unrecognised(String),
}

/// What kind of identity a `CustomerId` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerIdKind {
    Phone,
    Bsuid,
    AcsRawId,
}

impl CustomerId {
    /// Parses a phone number in any of the forms the providers and humans use.
    pub fn parse_phone(input: &str) -> Result<Self, CustomerIdError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(CustomerIdError::Empty);
        }
        // ACS phone identities are `4:` followed by E.164.
        let trimmed = trimmed.strip_prefix("4:").unwrap_or(trimmed);
        let mut digits = String::with_capacity(MAX_DIGITS);
        let mut plus_seen = false;
        for (i, c) in trimmed.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => plus_seen = true,
                ' ' | '-' | '(' | ')' | '.' | '\u{a0}' => {}
                other => return Err(CustomerIdError::InvalidCharacter(other)),
            }
        }
        // International dialling prefix `00` means the same as `+`.
        if !plus_seen && digits.starts_with("00") {
            digits.drain(..2);
        }
        if digits.is_empty() {
            return Err(CustomerIdError::Empty);
        }
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&digits.len()) {
            return Err(CustomerIdError::BadLength(digits.len()));
        }
        if digits.starts_with('0') {
            return Err(CustomerIdError::LeadingZero);
        }
        Ok(Self(format!("+{digits}")))
    }

    /// A WhatsApp business-scoped user id such as `US.13491208655302741918`.
    pub fn from_bsuid(bsuid: &str) -> Result<Self, CustomerIdError> {
        let bsuid = bsuid.trim();
        let valid = bsuid.split_once('.').is_some_and(|(country, rest)| {
            country.len() == 2
                && country.chars().all(|c| c.is_ascii_uppercase())
                && !rest.is_empty()
                && rest.len() <= 128
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !valid {
            return Err(CustomerIdError::BadBsuid(bsuid.to_owned()));
        }
        Ok(Self(format!("{BSUID_PREFIX}{bsuid}")))
    }

    /// An ACS communication identifier raw id. Phone identities (`4:+1…`) become phone customers;
    /// anything else (ACS users `8:acs:…`, Teams users) is kept verbatim.
    pub fn from_acs_raw_id(raw_id: &str) -> Result<Self, CustomerIdError> {
        let raw_id = raw_id.trim();
        if raw_id.is_empty() {
            return Err(CustomerIdError::Empty);
        }
        if raw_id.starts_with("4:") {
            return Self::parse_phone(raw_id);
        }
        let plausible = raw_id.len() <= 512
            && raw_id.contains(':')
            && raw_id.chars().all(|c| c.is_ascii_graphic());
        if !plausible {
            return Err(CustomerIdError::Unrecognised(raw_id.to_owned()));
        }
        Ok(Self(format!("{RAW_PREFIX}{raw_id}")))
    }

    /// Parses the canonical form produced by `as_str` (as used in API paths and storage), and
    /// also any phone form that `parse_phone` accepts.
    pub fn parse(input: &str) -> Result<Self, CustomerIdError> {
        let input = input.trim();
        if let Some(bsuid) = input.strip_prefix(BSUID_PREFIX) {
            return Self::from_bsuid(bsuid);
        }
        if let Some(raw) = input.strip_prefix(RAW_PREFIX) {
            return Self::from_acs_raw_id(raw);
        }
        Self::parse_phone(input)
    }

    /// The canonical value: storage keys, partition keys, wire formats. Not for logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> CustomerIdKind {
        if self.0.starts_with(BSUID_PREFIX) {
            CustomerIdKind::Bsuid
        } else if self.0.starts_with(RAW_PREFIX) {
            CustomerIdKind::AcsRawId
        } else {
            CustomerIdKind::Phone
        }
    }

    /// The E.164 number, when this customer is known by phone.
    pub fn e164(&self) -> Option<&str> {
        (self.kind() == CustomerIdKind::Phone).then_some(self.0.as_str())
    }

    /// The number as WhatsApp and ACS Advanced Messaging address it: digits, no `+`.
    pub fn whatsapp_address(&self) -> Option<&str> {
        self.e164().map(|n| &n[1..])
    }

    /// The business-scoped user id, when this customer is known only by it.
    pub fn bsuid(&self) -> Option<&str> {
        self.0.strip_prefix(BSUID_PREFIX)
    }

    /// A form safe for logs: country code and last three digits of a number, a prefix of other ids.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks a phone number or identifier for logs: keeps a short prefix and the last three
/// characters, so that operators can correlate without the log holding the number.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 6 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 6))
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({})", self.masked())
    }
}

impl Serialize for CustomerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CustomerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for CustomerId {
    type Err = CustomerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_phone_form_as_one_canonical_number() {
        let cases = [
            "+14255550123",
            "4:+14255550123",
            "14255550123",
            "+1 (425) 555-0123",
            "1-425-555-0123",
            "  +1 425.555.0123 ",
            "0014255550123",
            "4:14255550123",
        ];
        for case in cases {
            let id = CustomerId::parse_phone(case).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(id.as_str(), "+14255550123", "{case}");
            assert_eq!(id.kind(), CustomerIdKind::Phone);
        }
    }

    #[test]
    fn other_countries_keep_their_digits() {
        assert_eq!(
            CustomerId::parse_phone("5511987654321").unwrap().as_str(),
            "+5511987654321"
        );
        assert_eq!(
            CustomerId::parse_phone("+44 20 7946 0958")
                .unwrap()
                .as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn rejects_what_is_not_a_phone_number() {
        let cases: &[(&str, CustomerIdError)] = &[
            ("", CustomerIdError::Empty),
            ("   ", CustomerIdError::Empty),
            ("+", CustomerIdError::Empty),
            ("abc", CustomerIdError::InvalidCharacter('a')),
            ("+1425555012x", CustomerIdError::InvalidCharacter('x')),
            ("1+4255550123", CustomerIdError::InvalidCharacter('+')),
            ("8:acs:1234", CustomerIdError::InvalidCharacter(':')),
            ("+12345", CustomerIdError::BadLength(5)),
            ("+1234567890123456", CustomerIdError::BadLength(16)),
            ("+0425555012", CustomerIdError::LeadingZero),
            ("14255550123; DROP", CustomerIdError::InvalidCharacter(';')),
        ];
        for (input, expected) in cases {
            assert_eq!(
                CustomerId::parse_phone(input).as_ref(),
                Err(expected),
                "{input:?}"
            );
        }
    }

    #[test]
    fn bsuid_and_raw_ids_round_trip_through_the_canonical_form() {
        let bsuid = CustomerId::from_bsuid("US.13491208655302741918").unwrap();
        assert_eq!(bsuid.as_str(), "bsuid:US.13491208655302741918");
        assert_eq!(bsuid.bsuid(), Some("US.13491208655302741918"));
        assert_eq!(bsuid.e164(), None);
        assert_eq!(CustomerId::parse(bsuid.as_str()).unwrap(), bsuid);

        let acs = CustomerId::from_acs_raw_id("8:acs:resource_user-1").unwrap();
        assert_eq!(acs.as_str(), "acs:8:acs:resource_user-1");
        assert_eq!(acs.kind(), CustomerIdKind::AcsRawId);
        assert_eq!(CustomerId::parse(acs.as_str()).unwrap(), acs);

        let phone = CustomerId::from_acs_raw_id("4:+14255550123").unwrap();
        assert_eq!(phone.as_str(), "+14255550123");
        assert_eq!(phone.whatsapp_address(), Some("14255550123"));
    }

    #[test]
    fn rejects_malformed_bsuids_and_raw_ids() {
        assert!(CustomerId::from_bsuid("us.123").is_err());
        assert!(CustomerId::from_bsuid("USA.123").is_err());
        assert!(CustomerId::from_bsuid("US.").is_err());
        assert!(CustomerId::from_bsuid("US.12-3").is_err());
        assert!(CustomerId::from_acs_raw_id("").is_err());
        assert!(CustomerId::from_acs_raw_id("no-colon").is_err());
        assert!(CustomerId::from_acs_raw_id("8:acs:with space").is_err());
    }

    #[test]
    fn display_and_debug_never_show_the_whole_number() {
        let id = CustomerId::parse_phone("+14255550123").unwrap();
        assert_eq!(id.to_string(), "+14******123");
        assert!(!format!("{id:?}").contains("4255550"));
    }

    #[test]
    fn serde_uses_the_canonical_form_and_validates() {
        let id = CustomerId::parse_phone("14255550123").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"+14255550123\"");
        let back: CustomerId = serde_json::from_str("\"4:+14255550123\"").unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<CustomerId>("\"nope\"").is_err());
    }
}
