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

/// Bitcoin legacy address: Base58Check of version 0x00 (P2PKH) or 0x05
/// (P2SH) and a 20-byte hash, 26–35 characters starting `1` or `3`.
pub fn btc_base58_address(s: &[u8]) -> bool {
    (26..=35).contains(&s.len())
        && matches!(s.first(), Some(b'1' | b'3'))
        && base58check(s).is_some_and(|p| p.len() == 21 && matches!(p[0], 0x00 | 0x05))
}

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn bech32_polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

/// Bitcoin segwit address (BIP-173 bech32 for witness v0, BIP-350 bech32m
/// for v1+): `bc1`, one case only, checksum and program length checked.
pub fn btc_bech32_address(s: &[u8]) -> bool {
    if !(14..=74).contains(&s.len()) {
        return false;
    }
    let lower = s.iter().all(|b| !b.is_ascii_uppercase());
    let upper = s.iter().all(|b| !b.is_ascii_lowercase());
    if !(lower || upper) || !s[..3].eq_ignore_ascii_case(b"bc1") {
        return false;
    }
    let mut data = Vec::with_capacity(s.len() - 3);
    for &c in &s[3..] {
        match BECH32_CHARSET
            .iter()
            .position(|&a| a == c.to_ascii_lowercase())
        {
            Some(v) => data.push(v as u8),
            None => return false,
        }
    }
    if data.len() < 7 {
        return false;
    }
    // hrp "bc" expanded: high bits, 0, low bits.
    let hrp = [b'b' >> 5, b'c' >> 5, 0, b'b' & 31, b'c' & 31];
    let check = bech32_polymod(hrp.iter().copied().chain(data.iter().copied()));
    let version = data[0];
    let want = if version == 0 { 1 } else { 0x2bc8_30a3 };
    // 5-bit groups of the program (without version and the 6 checksum groups).
    let prog_bits = (data.len() - 7) * 5;
    let prog_len = prog_bits / 8;
    check == want
        && version <= 16
        && (2..=40).contains(&prog_len)
        && (version != 0 || prog_len == 20 || prog_len == 32)
}

/// Ethereum address: `0x` + 40 hex; in mixed case the EIP-55 checksum
/// (Keccak-256 of the lower-case hex) must hold.
pub fn eth_address(s: &[u8]) -> bool {
    use sha3::{Digest as _, Keccak256};
    if s.len() != 42 || !s.starts_with(b"0x") || !s[2..].iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    let hex = &s[2..];
    let has_upper = hex.iter().any(u8::is_ascii_uppercase);
    let has_lower = hex.iter().any(u8::is_ascii_lowercase);
    if !(has_upper && has_lower) {
        // No checksum to check; a run of one digit is not an address.
        return !hex.iter().all(|&b| b == hex[0]);
    }
    let lower: Vec<u8> = hex.iter().map(u8::to_ascii_lowercase).collect();
    let hash = Keccak256::digest(&lower);
    hex.iter().enumerate().all(|(i, &c)| {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0xf;
        !c.is_ascii_alphabetic() || (nibble >= 8) == c.is_ascii_uppercase()
    })
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

    #[test]
    fn wallet_addresses() {
        // Documented vectors: the genesis address, BIP-13's P2SH example,
        // BIP-173 and BIP-350 vectors, EIP-55's examples.
        assert!(btc_base58_address(b"1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"));
        assert!(btc_base58_address(b"3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy"));
        assert!(!btc_base58_address(b"1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb"));
        assert!(btc_bech32_address(
            b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
        ));
        assert!(btc_bech32_address(
            b"BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"
        ));
        assert!(btc_bech32_address(
            b"bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297"
        ));
        assert!(!btc_bech32_address(
            b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5"
        ));
        assert!(!btc_bech32_address(
            b"bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kV8f3t4"
        ));
        assert!(eth_address(b"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"));
        assert!(eth_address(b"0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"));
        assert!(eth_address(b"0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB"));
        assert!(eth_address(b"0xde0b295669a9fd93d5f28d9ec85e40f4cb697bae"));
        assert!(!eth_address(b"0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"));
        assert!(!eth_address(b"0x0000000000000000000000000000000000000000"));
    }
}
