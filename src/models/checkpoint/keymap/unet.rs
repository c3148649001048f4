//! The UNet: `model.diffusion_model.*` (LDM's `UNetModel`) → diffusers' `UNet2DConditionModel`.
//!
//! LDM numbers the encoder's blocks flat: `input_blocks.0` is `conv_in`, then for each level
//! `layers_per_block` (resnet, attention?) pairs and a downsampler; the decoder's
//! `output_blocks` hold `layers_per_block + 1` pairs per level with the upsampler last.

use super::{index_and_rest, whole, Target};

/// (LDM, diffusers) names of a resnet's layers.
const RESNET: [(&str, &str); 6] = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
];

/// (LDM, diffusers) names of the modules outside the blocks.
const FIXED: [(&str, &str); 7] = [
    ("input_blocks.0.0", "conv_in"),
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
];

/// `name` with a module prefix from `table` swapped for its other name (LDM → diffusers, or
/// back with `to_ldm`); the prefix must end at a dot or at the end of the name.
fn swap(name: &str, table: &[(&str, &str)], to_ldm: bool) -> Option<String> {
    table.iter().find_map(|&(ldm, diffusers)| {
        let (from, to) = if to_ldm {
            (diffusers, ldm)
        } else {
            (ldm, diffusers)
        };
        let tail = name.strip_prefix(from)?;
        (tail.is_empty() || tail.starts_with('.')).then(|| format!("{to}{tail}"))
    })
}

/// diffusers' names for a resnet's layers.
fn resnet(rest: &str) -> Option<String> {
    swap(rest, &RESNET, false)
}

/// The diffusers name of `key` (without the `model.diffusion_model.` prefix), or `None` when
/// the key is not part of a UNet with `layers_per_block` resnets per level.
pub fn map(key: &str, layers_per_block: usize) -> Option<Vec<Target>> {
    let per_level = layers_per_block + 1;
    if let Some(name) = swap(key, &FIXED, false) {
        return Some(whole(name));
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (n, rest) = index_and_rest(rest)?;
        if n == 0 {
            // `input_blocks.0.0` is conv_in (FIXED); nothing else lives there.
            return None;
        }
        let (level, j) = ((n - 1) / per_level, (n - 1) % per_level);
        let (m, rest) = index_and_rest(rest)?;
        let name = match (j < layers_per_block, m) {
            (true, 0) => format!("down_blocks.{level}.resnets.{j}.{}", resnet(rest)?),
            (true, 1) => format!("down_blocks.{level}.attentions.{j}.{rest}"),
            (false, 0) => format!(
                "down_blocks.{level}.downsamplers.0.conv.{}",
                rest.strip_prefix("op.")?
            ),
            _ => return None,
        };
        return Some(whole(name));
    }
    if let Some(rest) = key.strip_prefix("middle_block.") {
        let (m, rest) = index_and_rest(rest)?;
        let name = match m {
            0 => format!("mid_block.resnets.0.{}", resnet(rest)?),
            1 => format!("mid_block.attentions.0.{rest}"),
            2 => format!("mid_block.resnets.1.{}", resnet(rest)?),
            _ => return None,
        };
        return Some(whole(name));
    }
    if let Some(rest) = key.strip_prefix("output_blocks.") {
        let (n, rest) = index_and_rest(rest)?;
        let (level, j) = (n / per_level, n % per_level);
        let (m, rest) = index_and_rest(rest)?;
        let name = match m {
            0 => format!("up_blocks.{level}.resnets.{j}.{}", resnet(rest)?),
            // The upsampler follows the resnet directly in a level without attention.
            1 | 2 if rest.starts_with("conv.") => format!("up_blocks.{level}.upsamplers.0.{rest}"),
            1 => format!("up_blocks.{level}.attentions.{j}.{rest}"),
            _ => return None,
        };
        return Some(whole(name));
    }
    None
}

/// The inverse of [`map`] for a module name (no `.weight`/`.bias` tail needed): diffusers'
/// name → LDM's, for a UNet with `layers_per_block` resnets per level whose up levels have
/// attention as `up_attention` says (an upsampler's index follows the attention there).
/// kohya names SDXL LoRA layers this way.
pub fn to_ldm(name: &str, layers_per_block: usize, up_attention: &[bool]) -> Option<String> {
    let per_level = layers_per_block + 1;
    if let Some(ldm) = swap(name, &FIXED, true) {
        return Some(ldm);
    }
    let resnet = |rest: &str| swap(rest, &RESNET, true);
    if let Some(rest) = name.strip_prefix("down_blocks.") {
        let (level, rest) = index_and_rest(rest)?;
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = index_and_rest(rest)?;
        let n = 1 + level * per_level + j;
        return match kind {
            "resnets" => Some(format!("input_blocks.{n}.0.{}", resnet(rest)?)),
            "attentions" => Some(format!("input_blocks.{n}.1.{rest}")),
            "downsamplers" if j == 0 => {
                let tail = rest.strip_prefix("conv")?;
                Some(format!(
                    "input_blocks.{}.0.op{tail}",
                    (level + 1) * per_level
                ))
            }
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("mid_block.") {
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = index_and_rest(rest)?;
        return match (kind, j) {
            ("resnets", 0) => Some(format!("middle_block.0.{}", resnet(rest)?)),
            ("attentions", 0) => Some(format!("middle_block.1.{rest}")),
            ("resnets", 1) => Some(format!("middle_block.2.{}", resnet(rest)?)),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("up_blocks.") {
        let (level, rest) = index_and_rest(rest)?;
        let (kind, rest) = rest.split_once('.')?;
        let (j, rest) = index_and_rest(rest)?;
        let n = level * per_level + j;
        return match kind {
            "resnets" => Some(format!("output_blocks.{n}.0.{}", resnet(rest)?)),
            "attentions" => Some(format!("output_blocks.{n}.1.{rest}")),
            "upsamplers" if j == 0 => {
                let m = if *up_attention.get(level)? { 2 } else { 1 };
                Some(format!(
                    "output_blocks.{}.{m}.{rest}",
                    level * per_level + layers_per_block
                ))
            }
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::Part;
    use super::*;

    fn one(key: &str) -> String {
        let v = map(key, 2).unwrap_or_else(|| panic!("{key} unmapped"));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1, Part::Whole);
        v[0].0.clone()
    }

    /// SD 1.5's layout, as diffusers' conversion script spells it out for 4 levels × 2 layers.
    #[test]
    fn sd15_names() {
        for (ldm, diffusers) in [
            ("input_blocks.0.0.weight", "conv_in.weight"),
            (
                "input_blocks.1.0.in_layers.0.weight",
                "down_blocks.0.resnets.0.norm1.weight",
            ),
            (
                "input_blocks.2.1.proj_in.weight",
                "down_blocks.0.attentions.1.proj_in.weight",
            ),
            (
                "input_blocks.3.0.op.bias",
                "down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "input_blocks.4.0.skip_connection.weight",
                "down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "input_blocks.11.0.out_layers.3.weight",
                "down_blocks.3.resnets.1.conv2.weight",
            ),
            (
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            ),
            (
                "middle_block.2.emb_layers.1.bias",
                "mid_block.resnets.1.time_emb_proj.bias",
            ),
            (
                "output_blocks.2.1.conv.weight",
                "up_blocks.0.upsamplers.0.conv.weight",
            ),
            (
                "output_blocks.5.2.conv.bias",
                "up_blocks.1.upsamplers.0.conv.bias",
            ),
            (
                "output_blocks.5.1.norm.weight",
                "up_blocks.1.attentions.2.norm.weight",
            ),
            (
                "output_blocks.11.1.proj_out.weight",
                "up_blocks.3.attentions.2.proj_out.weight",
            ),
            ("time_embed.2.weight", "time_embedding.linear_2.weight"),
            ("out.2.bias", "conv_out.bias"),
        ] {
            assert_eq!(one(ldm), diffusers, "{ldm}");
        }
        for stray in [
            "input_blocks.3.1.foo",
            "middle_block.3.x",
            "nonsense",
            "input_blocks.x.0.y",
        ] {
            assert!(map(stray, 2).is_none(), "{stray}");
        }
    }

    /// Every module of an SDXL-shaped UNet (3 levels × 2 resnets, attention in levels 1–2, up
    /// levels 0–1) maps back to the LDM name it came from.
    #[test]
    fn diffusers_names_map_back_to_ldm() {
        let up_attention = [true, true, false];
        for ldm in [
            "input_blocks.0.0",
            "time_embed.0",
            "label_emb.0.2",
            "out.2",
            "input_blocks.1.0.in_layers.2",
            "input_blocks.3.0.op",
            "input_blocks.4.0.skip_connection",
            "input_blocks.4.1.transformer_blocks.1.attn2.to_k",
            "input_blocks.8.1.proj_out",
            "middle_block.0.emb_layers.1",
            "middle_block.1.transformer_blocks.0.ff.net.2",
            "middle_block.2.out_layers.3",
            "output_blocks.0.1.transformer_blocks.0.attn1.to_out.0",
            "output_blocks.2.2.conv",
            "output_blocks.5.2.conv",
            "output_blocks.8.0.in_layers.0",
        ] {
            let d = map(&format!("{ldm}.weight"), 2).unwrap_or_else(|| panic!("{ldm} unmapped"));
            let name = d[0].0.strip_suffix(".weight").unwrap();
            assert_eq!(
                to_ldm(name, 2, &up_attention).as_deref(),
                Some(ldm),
                "{name}"
            );
        }
        // The last up level has no attention: its upsampler (if any) would be `.1.conv`.
        assert_eq!(
            to_ldm("up_blocks.2.upsamplers.0.conv", 2, &up_attention).as_deref(),
            Some("output_blocks.8.1.conv")
        );
        assert_eq!(to_ldm("down_blocks.0.norm9", 2, &up_attention), None);
    }
}
