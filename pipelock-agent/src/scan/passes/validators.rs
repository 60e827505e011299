//! Checksums that turn a shape match into a finding: Luhn + card issuer,
//! IBAN mod-97, ABA routing checksum, SSN area rules, Base58Check (WIF).
use sha2::{Digest, Sha256};

/// Luhn checksum over ASCII digits (non-digits are rejected).
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix_num(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
}

/// Known issuer prefix and length: Visa, Mastercard (51–55, 2221–2720),
/// Amex, Discover, JCB, Diners, UnionPay.
pub fn card_issuer(digits: &[u8]) -> Option<&'static str> {
    let len = digits.len();
    if !(13..=19).contains(&len) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let p1 = prefix_num(digits, 1);
    let p2 = prefix_num(digits, 2);
    let p3 = prefix_num(digits, 3);
    let p4 = prefix_num(digits, 4);
    let p6 = prefix_num(digits, 6);
    if p1 == 4 && matches!(len, 13 | 16 | 19) {
        return Some("visa");
    }
    if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        return Some("mastercard");
    }
    if (p2 == 34 || p2 == 37) && len == 15 {
        return Some("amex");
    }
    if (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3) || (622_126..=622_925).contains(&p6))
        && (16..=19).contains(&len)
    {
        return Some("discover");
    }
    if (3528..=3589).contains(&p4) && (16..=19).contains(&len) {
        return Some("jcb");
    }
    if (p2 == 36 || (300..=305).contains(&p3) || p2 == 38) && (14..=19).contains(&len) {
        return Some("diners");
    }
    if p2 == 62 && (16..=19).contains(&len) {
        return Some("unionpay");
    }
    None
}

/// A payment card number: known issuer and Luhn-valid.
pub fn credit_card(digits: &[u8]) -> bool {
    card_issuer(digits).is_some() && luhn(digits) && !all_same(digits)
}

fn all_same(digits: &[u8]) -> bool {
    digits.windows(2).all(|w| w[0] == w[1])
}

/// Registered IBAN length per country (the common ones); `None` if unknown.
fn iban_length(country: &[u8]) -> Option<usize> {
    Some(match country {
        b"AD" => 24,
        b"AE" => 23,
        b"AT" => 20,
        b"AZ" => 28,
        b"BA" => 20,
        b"BE" => 16,
        b"BG" => 22,
        b"BH" => 22,
        b"BR" => 29,
        b"CH" => 21,
        b"CR" => 22,
        b"CY" => 28,
        b"CZ" => 24,
        b"DE" => 22,
        b"DK" => 18,
        b"DO" => 28,
        b"EE" => 20,
        b"EG" => 29,
        b"ES" => 24,
        b"FI" => 18,
        b"FO" => 18,
        b"FR" => 27,
        b"GB" => 22,
        b"GE" => 22,
        b"GI" => 23,
        b"GL" => 18,
        b"GR" => 27,
        b"GT" => 28,
        b"HR" => 21,
        b"HU" => 28,
        b"IE" => 22,
        b"IL" => 23,
        b"IS" => 26,
        b"IT" => 27,
        b"JO" => 30,
        b"KW" => 30,
        b"KZ" => 20,
        b"LB" => 28,
        b"LI" => 21,
        b"LT" => 20,
        b"LU" => 20,
        b"LV" => 21,
        b"MC" => 27,
        b"MD" => 24,
        b"ME" => 22,
        b"MK" => 19,
        b"MR" => 27,
        b"MT" => 31,
        b"MU" => 30,
        b"NL" => 18,
        b"NO" => 15,
        b"PK" => 24,
        b"PL" => 28,
        b"PS" => 29,
        b"PT" => 25,
        b"QA" => 29,
        b"RO" => 24,
        b"RS" => 22,
        b"SA" => 24,
        b"SE" => 24,
        b"SI" => 19,
        b"SK" => 24,
        b"SM" => 27,
        b"TN" => 24,
        b"TR" => 26,
        b"UA" => 29,
        b"VG" => 24,
        b"XK" => 20,
        _ => return None,
    })
}

/// IBAN: `CCdd` + BBAN, registered length for known countries, mod-97 == 1.
pub fn iban(s: &[u8]) -> bool {
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let (cc, rest) = s.split_at(2);
    if !cc.iter().all(u8::is_ascii_uppercase)
        || !rest[..2].iter().all(u8::is_ascii_digit)
        || !rest
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return false;
    }
    if let Some(len) = iban_length(cc)
        && len != s.len()
    {
        return false;
    }
    let mut rem = 0u32;
    for &b in s[4..].iter().chain(&s[..4]) {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u32::from(b - b'0')) % 97;
        } else {
            rem = (rem * 100 + u32::from(b - b'A' + 10)) % 97;
        }
    }
    rem == 1
}

/// ABA routing number: 9 digits, Federal Reserve prefix, 3-7-1 checksum.
pub fn aba_routing(d: &[u8]) -> bool {
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let prefix = prefix_num(d, 2);
    let fed_ok =
        prefix <= 12 || (21..=32).contains(&prefix) || (61..=72).contains(&prefix) || prefix == 80;
    if !fed_ok || all_same(d) {
        return false;
    }
    let v: Vec<u32> = d.iter().map(|b| u32::from(b - b'0')).collect();
    let sum = 3 * (v[0] + v[3] + v[6]) + 7 * (v[1] + v[4] + v[7]) + (v[2] + v[5] + v[8]);
    sum.is_multiple_of(10)
}

/// US SSN `AAA-GG-SSSS` digits (9): area not 000/666/9xx, group and serial not zero.
pub fn ssn(d: &[u8]) -> bool {
    if d.len() != 9 || !d.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let area = prefix_num(d, 3);
    let group = prefix_num(&d[3..], 2);
    let serial = prefix_num(&d[5..], 4);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

const B58_ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Decodes Base58 (Bitcoin alphabet); `None` on a non-alphabet byte.
pub fn base58_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    for &c in s {
        let mut carry = B58_ALPHABET.iter().position(|&a| a == c)? as u32;
        for byte in out.iter_mut().rev() {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            out.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = s.iter().take_while(|&&c| c == b'1').count();
    let mut full = vec![0u8; zeros];
    full.extend(out);
    Some(full)
}

/// Base58Check: payload + 4-byte double-SHA-256 checksum.
pub fn base58check(s: &[u8]) -> Option<Vec<u8>> {
    let raw = base58_decode(s)?;
    if raw.len() < 5 {
        return None;
    }
    let (payload, check) = raw.split_at(raw.len() - 4);
    let digest = Sha256::digest(Sha256::digest(payload));
    (digest[..4] == *check).then(|| payload.to_vec())
}

/// Bitcoin WIF private key: version 0x80 (mainnet) or 0xef (testnet), 32-byte
/// key with optional 0x01 compression flag, valid Base58Check.
pub fn wif(s: &[u8]) -> bool {
    match base58check(s) {
        Some(p) => {
            matches!(p.first(), Some(0x80 | 0xef))
                && (p.len() == 33 || (p.len() == 34 && p[33] == 0x01))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_issuer() {
        assert!(credit_card(b"4111111111111111"));
        assert!(credit_card(b"5555555555554444"));
        assert!(credit_card(b"378282246310005"));
        assert!(credit_card(b"6011111111111117"));
        assert!(!credit_card(b"4111111111111112"), "bad Luhn");
        assert!(!credit_card(b"9111111111111119"), "unknown issuer");
        assert!(!credit_card(b"0000000000000000"));
    }

    #[test]
    fn iban_mod97() {
        assert!(iban(b"GB82WEST12345698765432"));
        assert!(iban(b"DE89370400440532013000"));
        assert!(!iban(b"GB82WEST12345698765433"));
        assert!(!iban(b"DE8937040044053201300"), "wrong length for DE");
    }

    #[test]
    fn aba_checksum() {
        assert!(aba_routing(b"021000021"));
        assert!(aba_routing(b"011401533"));
        assert!(!aba_routing(b"021000022"));
        assert!(!aba_routing(b"991000021"), "bad Fed prefix");
    }

    #[test]
    fn ssn_rules() {
        assert!(ssn(b"123456789"));
        assert!(!ssn(b"000456789"));
        assert!(!ssn(b"666456789"));
        assert!(!ssn(b"923456789"));
        assert!(!ssn(b"123006789"));
    }

    #[test]
    fn wif_base58check() {
        // Well-known example key from the Bitcoin wiki.
        assert!(wif(b"5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ"));
        assert!(!wif(b"5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTK"));
    }
}
