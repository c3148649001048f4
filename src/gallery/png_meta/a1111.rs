//! AUTOMATIC1111's infotext (the `parameters` chunk): writing it exactly as A1111 does, and
//! reading what A1111, Forge and Civitai write.
//!
//! The format is three parts: the prompt (any number of lines), an optional
//! `Negative prompt: …` (also multi-line), and one last line of `Key: value` pairs joined by
//! `, `. A value containing `,`, `:` or a newline is JSON-quoted (A1111's `quote()` in
//! `modules/infotext_utils.py`). The reader follows A1111's `parse_generation_parameters`
//! step by step, because the ecosystem's files are whatever that function accepts; the one
//! extension is that a bare JSON array/object value (Civitai writes
//! `Civitai resources: [{…}, {…}]` unquoted) is kept whole instead of being cut at its first
//! comma.

use super::GenerationMetadata;

/// The A1111 infotext split into the fields Easel uses; everything else stays in `other`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedParameters {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: Option<usize>,
    /// A1111's display name, e.g. "DPM++ 2M Karras".
    pub sampler: Option<String>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub model_name: Option<String>,
    pub model_hash: Option<String>,
    /// Every other `Key: value` pair in order, unquoted (e.g. `Lora hashes`, `Clip skip`,
    /// `Version`), plus known keys whose value did not parse (e.g. `Seed: -1`).
    pub other: Vec<(String, String)>,
}

impl ParsedParameters {
    /// The value of a key kept in `other` (the last one if repeated, as A1111's dict does).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.other
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a text is not A1111 infotext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParametersError {
    #[error("the A1111 parameters text is empty")]
    Empty,
    #[error("the A1111 parameters text has no settings line (its last line needs at least 3 `Key: value` pairs, like `Steps: 20, Sampler: Euler a, CFG scale: 7`)")]
    NoSettingsLine,
}

/// A1111's display name for an Easel sampler's CLI name, for
/// [`GenerationMetadata::sampler_a1111`]; `None` for a sampler A1111 has no name for.
pub fn a1111_sampler_name(easel_name: &str) -> Option<&'static str> {
    match easel_name {
        "ddim" => Some("DDIM"),
        "euler" => Some("Euler"),
        "euler_a" => Some("Euler a"),
        "dpmpp_2m_karras" => Some("DPM++ 2M Karras"),
        _ => None,
    }
}

impl GenerationMetadata {
    /// AUTOMATIC1111's `parameters` text, as A1111's `create_infotext` writes it, so that
    /// Civitai and PNG-info tools read our images like theirs.
    ///
    /// Empty values are left out (A1111 leaves out unset ones, and its reader drops empty
    /// ones anyway). One deliberate difference: a value containing `"` is quoted too, so that
    /// our own reader gets it back unchanged.
    pub fn a1111_parameters(&self) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", self.sampler_a1111.clone()),
            // Rust prints the shortest round-tripping form like Python, but 7.0 as `7`, which
            // is what A1111's files show for whole CFG values.
            ("CFG scale", format!("{}", self.cfg_scale)),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
            ("Model hash", self.model_hash.clone()),
            ("Model", self.model_name.clone()),
        ];
        if let Some(vae) = &self.vae {
            pairs.push(("VAE hash", vae.hash.clone()));
            pairs.push(("VAE", vae.name.clone()));
        }
        if let Some(init) = &self.init_image {
            pairs.push(("Denoising strength", format!("{}", init.strength)));
            if let Some(blur) = init.mask_blur {
                pairs.push(("Mask blur", blur.to_string()));
            }
            if let Some(pad) = init.only_masked_padding {
                pairs.push(("Inpaint area", "Only masked".to_string()));
                pairs.push(("Masked area padding", pad.to_string()));
            }
        }
        if let Some(h) = &self.hires {
            // A1111's order and rules: the strength, then the scale, steps only when set.
            pairs.push(("Denoising strength", format!("{}", h.denoise)));
            pairs.push(("Hires upscale", format!("{}", h.scale)));
            if h.steps > 0 {
                pairs.push(("Hires steps", h.steps.to_string()));
            }
            pairs.push(("Hires upscaler", h.upscaler.a1111_name().to_string()));
        }
        if self.clip_skip > 1 {
            pairs.push(("Clip skip", self.clip_skip.to_string()));
        }
        if !self.loras.is_empty() {
            // A1111's Lora extension strips `:` and `,` from names so the list splits cleanly.
            let hashes: Vec<String> = self
                .loras
                .iter()
                .map(|l| format!("{}: {}", l.name.replace([':', ','], ""), l.hash))
                .collect();
            pairs.push(("Lora hashes", hashes.join(", ")));
        }
        if !self.embeddings.is_empty() {
            // A1111 strips `:` and `,` from names, as for LoRAs.
            let hashes: Vec<String> = self
                .embeddings
                .iter()
                .map(|e| format!("{}: {}", e.name.replace([':', ','], ""), e.hash))
                .collect();
            pairs.push(("TI hashes", hashes.join(", ")));
        }
        pairs.push(("Version", format!("easel-{}", self.easel_version)));

        let settings: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect();
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        format!("{}{negative}\n{}", self.prompt, settings.join(", "))
            .trim()
            .to_string()
    }
}

/// Parses A1111 infotext the way A1111's `parse_generation_parameters` does: the last line
/// is the settings line only if it holds at least 3 `Key: value` pairs; lines before it are
/// the prompt until one starts with `Negative prompt:`. Each prompt line is trimmed, as A1111
/// does. Text without a settings line is an error rather than "all prompt", because then it
/// is not A1111 infotext and callers should fall back to the raw text.
pub fn parse_a1111_parameters(text: &str) -> Result<ParsedParameters, ParametersError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ParametersError::Empty);
    }
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or_default();
    let pairs = scan_pairs(last.trim_end_matches('\r'));
    if pairs.len() < 3 {
        return Err(ParametersError::NoSettingsLine);
    }

    let mut parsed = ParsedParameters::default();
    let mut in_negative = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = rest.trim();
        }
        let target = if in_negative {
            &mut parsed.negative_prompt
        } else {
            &mut parsed.prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }

    for (key, raw) in pairs {
        let value = if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
            unquote(&raw)
        } else {
            raw
        };
        let number = value.trim();
        let known = match key.as_str() {
            "Steps" => number.parse().map(|v| parsed.steps = Some(v)).is_ok(),
            "CFG scale" => number
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| parsed.cfg_scale = Some(v))
                .is_some(),
            "Seed" => number.parse().map(|v| parsed.seed = Some(v)).is_ok(),
            "Size" => parse_size(&value)
                .map(|(w, h)| {
                    parsed.width = Some(w);
                    parsed.height = Some(h);
                })
                .is_some(),
            "Sampler" => {
                parsed.sampler = Some(value.clone());
                true
            }
            "Model" => {
                parsed.model_name = Some(value.clone());
                true
            }
            "Model hash" => {
                parsed.model_hash = Some(value.clone());
                true
            }
            _ => false,
        };
        if !known {
            parsed.other.push((key, value));
        }
    }
    Ok(parsed)
}

/// A1111's `quote()`: JSON-encode a value that would otherwise break the `Key: value, …`
/// line. We also quote `"` (see [`GenerationMetadata::a1111_parameters`]).
fn quote(value: &str) -> String {
    if !value.contains([',', '\n', ':', '"']) {
        return value.to_string();
    }
    // Python's json.dumps(ensure_ascii=False): escapes only `"`, `\` and control characters.
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A1111's `unquote()`: JSON-decode a quoted value, or keep it as written if that fails.
fn unquote(value: &str) -> String {
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
}

/// `WxH` → (W, H), like A1111's `^(\d+)x(\d+)$`.
fn parse_size(value: &str) -> Option<(usize, usize)> {
    let (w, h) = value.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(w) || !digits(h) {
        return None;
    }
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// Python's `\w`: letters, digits (any script) and `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// All `Key: value` pairs in a settings line, as A1111's
/// `re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line)` finds them
/// (values still quoted), plus whole bare JSON arrays/objects. Hand-written rather than a
/// regex so the JSON case can count brackets.
fn scan_pairs(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut pairs = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match pair_at(&chars, pos) {
            Some((key, value, end)) => {
                pairs.push((key, value));
                pos = end;
            }
            None => pos += 1,
        }
    }
    pairs
}

/// One pair starting exactly at `start`: (key, raw value, index after the match).
fn pair_at(chars: &[char], start: usize) -> Option<(String, String, usize)> {
    let n = chars.len();
    let mut i = start;
    while i < n && chars[i].is_whitespace() {
        i += 1;
    }
    // Key: \w[\w \-/]+ then `:`. `:` is outside the class, so only the longest run can be
    // followed by it; no backtracking needed.
    let key_start = i;
    if i >= n || !is_word(chars[i]) {
        return None;
    }
    i += 1;
    while i < n && (is_word(chars[i]) || matches!(chars[i], ' ' | '-' | '/')) {
        i += 1;
    }
    if i - key_start < 2 || i >= n || chars[i] != ':' {
        return None;
    }
    let key: String = chars[key_start..i].iter().collect();
    i += 1;
    while i < n && chars[i].is_whitespace() {
        i += 1;
    }
    let value_end = quoted_end(chars, i)
        .or_else(|| json_end(chars, i))
        .unwrap_or_else(|| (i..n).find(|&j| chars[j] == ',').unwrap_or(n));
    let value: String = chars[i..value_end].iter().collect();
    let end = if value_end < n { value_end + 1 } else { n };
    Some((key, value, end))
}

/// End (exclusive) of `"(?:\\.|[^\\"])+"` at `i` when a `,` or the end of line follows it.
fn quoted_end(chars: &[char], i: usize) -> Option<usize> {
    if chars.get(i) != Some(&'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match chars.get(j)? {
            '\\' if chars.get(j + 1).is_some_and(|&c| c != '\n') => j += 2,
            '\\' => return None,
            '"' => break,
            _ => j += 1,
        }
    }
    // At least one character inside, and only `,` or the end may follow.
    if j == i + 1 || !matches!(chars.get(j + 1), None | Some(',')) {
        return None;
    }
    Some(j + 1)
}

/// End (exclusive) of a bare JSON array/object at `i` (brackets balanced outside strings)
/// when only whitespace and then `,` or the end of line follow it.
fn json_end(chars: &[char], i: usize) -> Option<usize> {
    if !matches!(chars.get(i), Some('[' | '{')) {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut j = i;
    while j < chars.len() {
        let c = chars[j];
        if in_string {
            match c {
                '\\' => j += 1,
                '"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                '"' => in_string = true,
                '[' | '{' => depth += 1,
                ']' | '}' => {
                    depth -= 1;
                    if depth == 0 {
                        let end = j + 1;
                        let mut k = end;
                        while k < chars.len() && chars[k].is_whitespace() {
                            k += 1;
                        }
                        return matches!(chars.get(k), None | Some(',')).then_some(end);
                    }
                }
                _ => {}
            }
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(line: &str) -> Vec<(String, String)> {
        scan_pairs(line)
    }

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn quote_matches_python_json_dumps() {
        assert_eq!(quote("Euler a"), "Euler a");
        assert_eq!(quote("a, b"), "\"a, b\"");
        assert_eq!(quote("k: v"), "\"k: v\"");
        assert_eq!(quote("x\ny"), "\"x\\ny\"");
        assert_eq!(quote("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quote("猫, \\ \u{1}"), "\"猫, \\\\ \\u0001\"");
    }

    #[test]
    fn unquote_inverts_quote_and_keeps_broken_json() {
        for v in ["a, b", "k: v", "x\ny", "say \"hi\"", "猫, \\ \u{1}"] {
            assert_eq!(unquote(&quote(v)), v);
        }
        assert_eq!(unquote("\"a\" \"b\""), "\"a\" \"b\"");
    }

    #[test]
    fn scans_like_a1111_regex() {
        assert_eq!(
            pairs("Steps: 20, Sampler: Euler a, CFG scale: 7"),
            vec![
                p("Steps", "20"),
                p("Sampler", "Euler a"),
                p("CFG scale", "7")
            ]
        );
        // Quoted values keep their quotes here; unquoting happens later.
        assert_eq!(
            pairs(r#"Lora hashes: "a: 1, b: 2", Version: v1"#),
            vec![p("Lora hashes", r#""a: 1, b: 2""#), p("Version", "v1")]
        );
        // An escaped quote does not end the value.
        assert_eq!(
            pairs(r#"Model: "x \"y\", z", Seed: 1"#),
            vec![p("Model", r#""x \"y\", z""#), p("Seed", "1")]
        );
        // A quote not followed by `,` falls back to the plain rule, as the regex does.
        assert_eq!(
            pairs(r#"A b: "x" y, Seed: 1"#),
            vec![p("A b", r#""x" y"#), p("Seed", "1")]
        );
        // Single-character keys do not match (`\w[\w \-/]+` needs two).
        assert_eq!(pairs("a: 1, bb: 2"), vec![p("bb", "2")]);
        // Empty value, trailing comma.
        assert_eq!(
            pairs("Key: , Other: 2,"),
            vec![p("Key", ""), p("Other", "2")]
        );
    }

    #[test]
    fn keeps_bare_json_values_whole() {
        let line = r#"Seed: 1, Civitai resources: [{"type":"checkpoint","modelVersionId":290640},{"type":"lora","weight":0.8}], Civitai metadata: {"remixOfId":1,"x":"a,b"}"#;
        assert_eq!(
            pairs(line),
            vec![
                p("Seed", "1"),
                p(
                    "Civitai resources",
                    r#"[{"type":"checkpoint","modelVersionId":290640},{"type":"lora","weight":0.8}]"#
                ),
                p("Civitai metadata", r#"{"remixOfId":1,"x":"a,b"}"#),
            ]
        );
        // Unbalanced: the plain rule applies.
        assert_eq!(
            pairs("Note: [a, bb: c"),
            vec![p("Note", "[a"), p("bb", "c")]
        );
    }

    #[test]
    fn size_needs_digits_x_digits() {
        assert_eq!(parse_size("512x768"), Some((512, 768)));
        assert_eq!(parse_size("512 x 768"), None);
        assert_eq!(parse_size("x768"), None);
        assert_eq!(parse_size("-1x2"), None);
    }

    #[test]
    fn sampler_names() {
        assert_eq!(a1111_sampler_name("euler_a"), Some("Euler a"));
        assert_eq!(
            a1111_sampler_name("dpmpp_2m_karras"),
            Some("DPM++ 2M Karras")
        );
        assert_eq!(a1111_sampler_name("ddim"), Some("DDIM"));
        assert_eq!(a1111_sampler_name("euler"), Some("Euler"));
        assert_eq!(a1111_sampler_name("unipc"), None);
    }

    #[test]
    fn rejects_text_without_settings() {
        assert_eq!(parse_a1111_parameters("  \n "), Err(ParametersError::Empty));
        assert_eq!(
            parse_a1111_parameters("a cat\nSteps: 20, Sampler: Euler"),
            Err(ParametersError::NoSettingsLine)
        );
    }
}
