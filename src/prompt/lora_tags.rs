//! AUTOMATIC1111's `<lora:name:weight>` prompt syntax.
//!
//! Prompts shared on Civitai and in PNG metadata carry their adapters inline, so Easel reads them
//! the way A1111 does: `<lora:NAME>` (weight 1), `<lora:NAME:W>` (W for the text encoder and the
//! UNet), `<lora:NAME:TE:UNET>`, or named `<lora:NAME:te=0.5:unet=1>`; `<lyco:…>` is the same.
//! The tag text is removed before the prompt is encoded (CLIP would otherwise read it as words)
//! but stays in the prompt that is saved, so the image can be reproduced here and in A1111.
//! `--lora NAME:W` on the command line uses the same grammar.

use std::borrow::Cow;

/// One adapter named by a tag or a `--lora` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// A name (file stem) or, on the command line, a path.
    pub name: String,
    pub weight: f64,
    /// The text encoder's weight when it differs from `weight`.
    pub te_weight: Option<f64>,
}

impl LoraSpec {
    /// The tag A1111 would write for this adapter: `<lora:name:w>` or `<lora:name:te:unet>`.
    pub fn to_tag(&self) -> String {
        match self.te_weight {
            Some(te) if te != self.weight => {
                format!("<lora:{}:{}:{}>", self.name, te, self.weight)
            }
            _ => format!("<lora:{}:{}>", self.name, self.weight),
        }
    }
}

/// Every `<lora:…>`/`<lyco:…>` tag: (byte range of the whole tag, its arguments). Matches
/// A1111's `<(\w+):([^>]+)>` restricted to the two adapter kinds.
fn tags(prompt: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = prompt[from..].find('<') {
        let start = from + rel;
        let rest = &prompt[start + 1..];
        let args_at = ["lora:", "lyco:"]
            .iter()
            .find(|k| rest.starts_with(*k))
            .map(|k| start + 1 + k.len());
        if let Some(args_at) = args_at {
            if let Some(len) = prompt[args_at..].find('>').filter(|&n| n > 0) {
                out.push((start..args_at + len + 1, &prompt[args_at..args_at + len]));
                from = args_at + len + 1;
                continue;
            }
        }
        from = start + 1;
    }
    out
}

/// The prompt with every `<lora:…>`/`<lyco:…>` tag removed (nothing else changes, exactly as
/// A1111 does it).
pub fn strip_tags(prompt: &str) -> Cow<'_, str> {
    let found = tags(prompt);
    if found.is_empty() {
        return Cow::Borrowed(prompt);
    }
    let mut out = String::with_capacity(prompt.len());
    let mut last = 0;
    for (range, _) in found {
        out.push_str(&prompt[last..range.start]);
        last = range.end;
    }
    out.push_str(&prompt[last..]);
    Cow::Owned(out)
}

/// The adapters a prompt's tags name, in order. Err = the first malformed tag, quoted.
pub fn prompt_loras(prompt: &str) -> Result<Vec<LoraSpec>, String> {
    tags(prompt)
        .into_iter()
        .map(|(range, args)| parse_spec(args).map_err(|e| format!("{}: {e}", &prompt[range])))
        .collect()
}

/// Parses `NAME[:W]`, `NAME:TE:UNET` or `NAME:te=W:unet=W` (A1111's argument order: text
/// encoder first). Items are taken as weights from the right, so a name may hold `:` (a Windows
/// path on the command line).
pub fn parse_spec(spec: &str) -> Result<LoraSpec, String> {
    let items: Vec<&str> = spec.split(':').collect();
    let mut positional = Vec::new();
    let (mut te, mut unet) = (None, None);
    let mut name_end = items.len();
    while name_end > 1 && items.len() - name_end < 3 {
        let item = items[name_end - 1].trim();
        if let Some((key, value)) = item.split_once('=') {
            let v = number(value)?;
            match key.trim() {
                "te" => te = Some(v),
                "unet" => unet = Some(v),
                // A1111's dynamic-rank option: accepted, not used (it only trims rank).
                "dyn" => {}
                other => return Err(format!("unknown option {other:?} (te=, unet=)")),
            }
        } else if let Ok(v) = item.parse::<f64>() {
            positional.insert(0, check(v)?);
        } else {
            break;
        }
        name_end -= 1;
    }
    let name = items[..name_end].join(":").trim().to_string();
    if name.is_empty() {
        return Err("no adapter name".into());
    }
    let te = te.or(positional.first().copied()).unwrap_or(1.0);
    let unet = unet.or(positional.get(1).copied()).unwrap_or(te);
    Ok(LoraSpec {
        name,
        weight: unet,
        te_weight: (te != unet).then_some(te),
    })
}

fn number(s: &str) -> Result<f64, String> {
    let v = s
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a number"))?;
    check(v)
}

fn check(v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("weight {v} is not a finite number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, weight: f64, te: Option<f64>) -> LoraSpec {
        LoraSpec {
            name: name.into(),
            weight,
            te_weight: te,
        }
    }

    #[test]
    fn a1111_argument_forms() {
        assert_eq!(parse_spec("x").unwrap(), spec("x", 1.0, None));
        assert_eq!(parse_spec("x:0.8").unwrap(), spec("x", 0.8, None));
        assert_eq!(parse_spec("x:-1.5").unwrap(), spec("x", -1.5, None));
        // text encoder first, as in A1111
        assert_eq!(parse_spec("x:0.5:1").unwrap(), spec("x", 1.0, Some(0.5)));
        assert_eq!(
            parse_spec("x:unet=0.7:te=0.2").unwrap(),
            spec("x", 0.7, Some(0.2))
        );
        assert_eq!(parse_spec("x:te=0").unwrap(), spec("x", 0.0, None));
        assert_eq!(
            parse_spec(r"C:\loras\x.safetensors:0.5").unwrap(),
            spec(r"C:\loras\x.safetensors", 0.5, None)
        );
        assert!(parse_spec(":1").is_err());
        assert!(parse_spec("x:te=abc").is_err());
        assert!(parse_spec("x:inf").is_err());
    }

    #[test]
    fn tags_are_found_and_stripped() {
        let p = "a cat, <lora:style:0.8> on a mat <lyco:detail:0.2:1>";
        assert_eq!(
            prompt_loras(p).unwrap(),
            vec![spec("style", 0.8, None), spec("detail", 1.0, Some(0.2))]
        );
        assert_eq!(strip_tags(p), "a cat,  on a mat ");
        assert_eq!(strip_tags("no tags"), "no tags");
        assert_eq!(strip_tags("<lora:> <b> <lora:x"), "<lora:> <b> <lora:x");
        assert!(prompt_loras("<lora:x:oops=1>")
            .unwrap_err()
            .contains("<lora:x:oops=1>"));
    }

    #[test]
    fn tags_round_trip() {
        for s in [spec("a", 0.5, None), spec("b", 1.0, Some(0.25))] {
            let tag = s.to_tag();
            assert_eq!(prompt_loras(&tag).unwrap(), vec![s]);
        }
    }
}
