//! Streaming BIP-39 seed-phrase detector (English word list): 12, 15, 18, 21
//! or 24 consecutive list words, case-insensitive, separated by whitespace,
//! commas, numbering ("1. word 2) word") or the JSON/C escapes `\n`, `\t`
//! and `\r` (a phrase typed one word per line, sent in a JSON body), whose
//! checksum is valid.
//!
//! A phrase lies inside a "clean run": a stretch with none of the break
//! positions a 64-byte block classification finds cheaply (punctuation,
//! words shorter than 3 or longer than 8 letters, long digit runs), holding
//! at least 12 word starts. Blocks are skipped until a clean run has that
//! many, and only then the exact tokeniser runs. After a break position the
//! tokeniser's state does not depend on earlier bytes, which makes skipping
//! exact. State is constant per stream: the last 24 word indices, one
//! partial word and at most `PEND` pending bytes.
//!
//! `wordlist`: the word table and checksum; `classify`: the block
//! classification; `tokenise`: the exact tokeniser; `scanner`: the pass.
mod classify;
mod scanner;
mod tokenise;
mod wordlist;

pub use scanner::SeedScanner;

/// Shortest phrase, in words.
const MIN_WORDS: usize = 12;
/// Longest phrase, in words (longer runs are cut into phrases).
const MAX_WORDS: usize = 24;
/// Phrase lengths tried, longest first.
const LENGTHS: [usize; 5] = [24, 21, 18, 15, 12];
/// Longest BIP-39 English word.
const MAX_WORD: u8 = 8;
/// Longest numbering ("24.").
const MAX_NUM: u8 = 2;
/// Shortest byte span of a phrase: 12 three-letter words, 11 separators.
const MIN_SPAN: usize = 47;
/// Longest clean run kept pending while skipping; a longer one (few words
/// among many separators) is tokenised instead.
const PEND: usize = 256;

/// A seed phrase found in the stream (the words themselves are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedHit {
    /// Absolute stream offset of the first word.
    pub start: u64,
    /// Number of words (12, 15, 18, 21 or 24).
    pub words: usize,
}

#[cfg(test)]
mod tests {
    use super::{
        classify::{Simd, classify_scalar},
        tokenise::Tokenizer,
        wordlist::{checksum_ok, lookup, pack, table},
        *,
    };
    use crate::scan::passes::blocks::BLOCK;

    const V12: &[&str] = &[
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "scheme spot photo card baby mountain device kick cradle pact join borrow",
    ];
    const V18: &str = "abandon abandon abandon abandon abandon abandon abandon abandon abandon \
                       abandon abandon abandon abandon abandon abandon abandon abandon agent";
    const V24: &[&str] = &[
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
         abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon \
         abandon art",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo \
         zoo vote",
        "void come effort suffer camp survey warrior heavy shoot primary clutch crush open amazing \
         screen patrol group space point ten exist slush involve unfold",
    ];
    const PROSE: &str = "Permission is hereby granted, free of charge, to any person obtaining a \
        copy of this software and associated documentation files (the \"Software\"), to deal in \
        the Software without restriction. Seed words like abandon ability able about above \
        absent absorb abstract and the rest of the list: twelve words make up a wallet \
        recovery phrase, which should never leave your computer, never travel over the \
        network and never be typed into a website asking for your seed words again. ";

    fn scan_chunks(data: &[u8], sizes: &mut dyn FnMut() -> usize) -> Vec<SeedHit> {
        scan_chunks_with(Simd::detect(), data, sizes)
    }

    fn scan_chunks_with(simd: Simd, data: &[u8], sizes: &mut dyn FnMut() -> usize) -> Vec<SeedHit> {
        let mut s = SeedScanner::with_simd(simd);
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = sizes().max(1).min(data.len() - i);
            s.feed(&data[i..i + n], &mut out);
            i += n;
        }
        s.finish(&mut out);
        out
    }

    fn scan(data: &[u8]) -> Vec<SeedHit> {
        scan_chunks(data, &mut || 4096)
    }

    /// The tokeniser alone over the whole input (no block skipping).
    fn reference(data: &[u8]) -> Vec<SeedHit> {
        let t = table();
        let mut tk = Tokenizer::default();
        let mut out = Vec::new();
        for &b in data {
            tk.step(b, t, &mut out);
        }
        tk.finish(t, &mut out);
        out
    }

    fn hit(start: usize, words: usize) -> SeedHit {
        SeedHit {
            start: start as u64,
            words,
        }
    }

    /// Small deterministic PRNG (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mnemonic(words: usize, rng: &mut Rng) -> String {
        let mut ent = [0u8; 32];
        for b in ent.iter_mut() {
            *b = rng.next() as u8;
        }
        let m = bip39::Mnemonic::from_entropy_in(bip39::Language::English, &ent[..words * 4 / 3]);
        m.map(|m| m.to_string()).unwrap_or_default()
    }

    #[test]
    fn official_vectors_found() {
        for v in V12.iter().chain(V24).chain([&V18]) {
            if v.starts_with("abandon abandon") || v.starts_with("zoo zoo") {
                // Valid, but repetitive: not reported (see `varied`).
                assert!(scan(v.as_bytes()).is_empty(), "{v}");
                continue;
            }
            let n = v.split_whitespace().count();
            let text = format!("mnemonic: \"{v}\"\n");
            assert_eq!(scan(text.as_bytes()), vec![hit(11, n)], "{v}");
            assert_eq!(scan(v.as_bytes()), vec![hit(0, n)], "{v}");
        }
    }

    #[test]
    fn generated_phrases_of_every_length_found() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for words in [12, 15, 18, 21, 24] {
            for _ in 0..20 {
                let m = mnemonic(words, &mut rng);
                assert!(bip39::Mnemonic::parse_in_normalized(bip39::Language::English, &m).is_ok());
                let text = format!("The key is {m}. Keep it safe.");
                assert_eq!(scan(text.as_bytes()), vec![hit(11, words)], "{m}");
            }
        }
    }

    #[test]
    fn bad_checksum_not_found() {
        // "abandon x11 abandon": the checksum wants "about" (and the phrase
        // is too repetitive to report anyway).
        let v = ["abandon"; 12].join(" ");
        assert!(scan(v.as_bytes()).is_empty());
        let v = V12[1].replace("yellow", "year");
        assert!(scan(v.as_bytes()).is_empty());
        for v in V12 {
            let (head, _) = v.rsplit_once(' ').unwrap_or_default();
            for last in ["abandon", "zoo", "wallet"] {
                let w = format!("{head} {last}");
                if w != *v {
                    assert!(scan(w.as_bytes()).is_empty(), "{w}");
                }
            }
        }
        // A 24-word phrase with a wrong last word is not reported as one
        // (its 12- to 21-word prefixes are random windows: 1 in 16 to 1 in
        // 128 of those pass by chance, as with any BIP-39 checker).
        let v = V24[2].replace("unfold", "zoo");
        assert!(scan(v.as_bytes()).iter().all(|h| h.words < 24));
    }

    #[test]
    fn eleven_words_not_found() {
        let v: Vec<&str> = V12[1].split(' ').skip(1).collect();
        assert!(scan(v.join(" ").as_bytes()).is_empty());
        // A non-list word in the middle breaks the phrase.
        let v = V12[1].replace("wave", "waves");
        assert!(scan(v.as_bytes()).is_empty());
        // So does punctuation.
        let v = V12[1].replace("wave ", "wave; ");
        assert!(scan(v.as_bytes()).is_empty());
    }

    #[test]
    fn prose_not_found() {
        assert!(scan(PROSE.repeat(50).as_bytes()).is_empty());
        for f in [
            "/usr/share/common-licenses/GPL-3",
            "/usr/share/common-licenses/Apache-2.0",
        ] {
            if let Ok(b) = std::fs::read(f) {
                assert!(scan(&b).is_empty(), "{f}");
            }
        }
    }

    #[test]
    fn case_and_separators() {
        let v = V12[2].to_uppercase().replace(' ', "\n");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
        let v = V12[2].replace(' ', ",\t ");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
        let words: Vec<&str> = V24[2].split(' ').collect();
        let numbered: String = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i % 2 == 0 {
                    format!("{}. {w}\n", i + 1)
                } else {
                    format!("{}) {w} ", i + 1)
                }
            })
            .collect();
        assert_eq!(scan(numbered.as_bytes()), vec![hit(3, 24)]);
        let v = format!("<p>{}</p>", V12[4].replace(' ', "\r\n"));
        assert_eq!(scan(v.as_bytes()), vec![hit(3, 12)]);
        // Mixed case within a word.
        let v = V12[4].replace("mountain", "MounTain");
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 12)]);
    }

    #[test]
    fn json_escaped_line_breaks_separate() {
        // One word per line, as a JSON string: `"scheme\nspot\n…"`.
        for sep in ["\\n", "\\r\\n", "\\t", " \\n ", "\\n\\n"] {
            let v = format!("{{\"content\":\"{}\"}}", V12[4].replace(' ', sep));
            assert_eq!(scan(v.as_bytes()), vec![hit(12, 12)], "{sep}");
            for cut in 0..v.len() {
                assert_eq!(
                    scan_chunks(v.as_bytes(), &mut || cut.max(1)),
                    vec![hit(12, 12)],
                    "{sep}, chunks of {cut}"
                );
            }
        }
        // Other escapes end the run: an escaped backslash before `n`, a
        // unicode escape, an escaped quote.
        for sep in ["\\\\n", "\\u0020", "\\\""] {
            let v = V12[4].replacen(' ', sep, 1).replace(' ', "\\n");
            assert_eq!(scan(v.as_bytes()), vec![], "{sep}");
            assert_eq!(scan(v.as_bytes()), reference(v.as_bytes()), "{sep}");
        }
    }

    #[test]
    fn longest_reported_once_and_long_runs_cut() {
        // 24-word vector: its 12-word prefix is not reported separately.
        assert_eq!(scan(V24[2].as_bytes()), vec![hit(0, 24)]);
        // Two phrases back to back (one run of 36 words).
        let v = format!("{} {}", V24[2], V12[1]);
        let second = V24[2].len() + 1;
        assert_eq!(scan(v.as_bytes()), vec![hit(0, 24), hit(second, 12)]);
        let v = format!("{} {}", V12[1], V12[2]);
        assert_eq!(
            scan(v.as_bytes()),
            vec![hit(0, 12), hit(V12[1].len() + 1, 12)]
        );
        // The same phrase twice, separately.
        let v = format!("{}\n\"{}\"", V12[4], V12[4]);
        assert_eq!(
            scan(v.as_bytes()),
            vec![hit(0, 12), hit(V12[4].len() + 2, 12)]
        );
    }

    #[test]
    fn words_glued_to_other_tokens_do_not_count() {
        for v in [
            format!("x{}", V12[1]),
            format!("{}x", V12[1]),
            format!("1{}", V12[1]),
            format!("{}1", V12[1]),
        ] {
            assert!(scan(v.as_bytes()).is_empty(), "{v}");
        }
        // Words around the phrase that are not list words do not hurt.
        let v = format!("seedphrase {} thereafter", V12[1]);
        assert_eq!(scan(v.as_bytes()), vec![hit(11, 12)]);
    }

    #[test]
    fn every_split_point_and_byte_chunks() {
        let text = format!("{}wallet backup:\n{}\nend of it. ", PROSE, V24[2]);
        let data = text.as_bytes();
        let want = vec![hit(PROSE.len() + 15, 24)];
        assert_eq!(scan(data), want);
        for split in 0..=data.len() {
            let mut s = SeedScanner::default();
            let mut out = Vec::new();
            s.feed(&data[..split], &mut out);
            s.feed(&data[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, want, "split at {split}");
        }
        assert_eq!(scan_chunks(data, &mut || 1), want);
        let mut rng = Rng(77);
        for _ in 0..200 {
            assert_eq!(scan_chunks(data, &mut || rng.below(130)), want);
        }
    }

    #[test]
    fn skipping_matches_the_plain_tokeniser() {
        // Random mixtures of list words, English words, numbering and
        // punctuation, with phrases planted: the block-skipping scanner must
        // agree with the tokeniser run over every byte.
        let list = bip39::Language::English.word_list();
        let extra = [
            "a",
            "of",
            "to",
            "in",
            "the",
            "The",
            "and",
            "AND",
            "hand",
            "sand",
            "bathe",
            "is",
            "software",
            "copyright",
            "2024",
            "12",
            "3.",
            "7)",
            "x1",
            "abc123",
            "longerword",
            "zz",
            "—",
            "ünï",
        ];
        let seps = [
            " ", " ", " ", "\n", ", ", "\t", ". ", "; ", "\"", "(", ")", "..", " 1. ", "\\n",
            "\\n", "\\r\\n", "\\t", "\\\\", "\\\\n", "\\\"", "\\u00e9", "\\", "\\\\\\n",
        ];
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut found = 0;
        for round in 0..300 {
            let mut text = String::new();
            while text.len() < 3000 {
                match rng.below(20) {
                    0 => text.push_str(&mnemonic([12, 15, 18, 21, 24][rng.below(5)], &mut rng)),
                    1..=11 => text.push_str(list[rng.below(2048)]),
                    12..=13 => text.push_str(&list[rng.below(2048)].to_uppercase()),
                    // A phrase spread wide: longer than the pending buffer.
                    14 if rng.below(4) == 0 => {
                        let wide = " ".repeat(1 + rng.below(40));
                        text.push_str(&mnemonic(12, &mut rng).replace(' ', &wide));
                    }
                    // A phrase one word per line, JSON-escaped.
                    15 if rng.below(3) == 0 => {
                        text.push_str(&mnemonic(12, &mut rng).replace(' ', "\\n"));
                    }
                    _ => text.push_str(extra[rng.below(extra.len())]),
                }
                let sep = if rng.below(4) == 0 {
                    seps[rng.below(seps.len())]
                } else {
                    " "
                };
                text.push_str(sep);
                if rng.below(40) == 0 {
                    // Long blank runs (padding, indentation).
                    text.push_str(&" \n".repeat(rng.below(200)));
                }
            }
            let mut data = text.into_bytes();
            if round % 10 == 0 {
                for _ in 0..20 {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
            }
            let want = reference(&data);
            found += want.len();
            assert_eq!(scan(&data), want, "round {round}");
            let mut r2 = Rng(round + 1);
            assert_eq!(
                scan_chunks(&data, &mut || r2.below(100)),
                want,
                "round {round}"
            );
            // The portable build of the scanner, whatever this CPU has.
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                scan_chunks_with(Simd::Sse2, &data, &mut || 4096),
                want,
                "round {round}, SSE2"
            );
        }
        assert!(found > 100, "only {found} phrases");
    }

    #[test]
    fn binary_input_no_panic() {
        let mut rng = Rng(99);
        let data: Vec<u8> = (0..200_000).map(|_| rng.next() as u8).collect();
        assert!(scan(&data).is_empty());
        assert_eq!(scan(&data), reference(&data));
        // Long runs of letters, spaces, digits.
        for fill in [&b"a"[..], b" ", b"1", b"aaa ", b"1. ", b"\n"] {
            let d = fill.repeat(5000);
            assert!(scan(&d).is_empty());
        }
        let mut s = SeedScanner::default();
        let mut out = Vec::new();
        s.feed(&[], &mut out);
        s.finish(&mut out);
        s.finish(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn simd_classification_matches_scalar() {
        let all: Vec<u8> = (0..=255).collect();
        for blk in all.chunks_exact(BLOCK) {
            let Ok(a) = <&[u8; BLOCK]>::try_from(blk) else {
                continue;
            };
            let want = classify_scalar(a);
            let got = Simd::detect().classify(a);
            assert_eq!(format!("{got:?}"), format!("{want:?}"));
            #[cfg(target_arch = "x86_64")]
            {
                let got = super::classify::classify_sse2(a);
                assert_eq!(format!("{got:?}"), format!("{want:?}"));
            }
        }
    }

    #[test]
    fn checksum_matches_bip39_crate() {
        let mut rng = Rng(5);
        let list = bip39::Language::English.word_list();
        for words in [12, 15, 18, 21, 24] {
            for _ in 0..200 {
                let idx: Vec<u16> = (0..words).map(|_| rng.below(2048) as u16).collect();
                let phrase: Vec<&str> = idx.iter().map(|&i| list[usize::from(i)]).collect();
                let crate_ok = bip39::Mnemonic::parse_in_normalized(
                    bip39::Language::English,
                    &phrase.join(" "),
                )
                .is_ok();
                assert_eq!(checksum_ok(&idx), crate_ok);
            }
        }
        let t = table();
        for (i, w) in list.iter().enumerate() {
            assert_eq!(lookup(t, pack(w)), Some(i as u16));
        }
        assert_eq!(lookup(t, pack("abando")), None);
        assert_eq!(lookup(t, pack("the")), None);
    }
}
