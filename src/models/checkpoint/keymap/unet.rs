//! The UNet: `model.diffusion_model.*` (LDM's `UNetModel`) → diffusers' `UNet2DConditionModel`.
//!
//! LDM numbers the encoder's blocks flat: `input_blocks.0` is `conv_in`, then for each level
//! `layers_per_block` (resnet, attention?) pairs and a downsampler; the decoder's
//! `output_blocks` hold `layers_per_block + 1` pairs per level with the upsampler last.

use super::{index_and_rest, whole, Target};

/// diffusers' names for a resnet's layers.
fn resnet(rest: &str) -> Option<String> {
    const NAMES: [(&str, &str); 6] = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ];
    NAMES.iter().find_map(|(ldm, diffusers)| {
        rest.strip_prefix(ldm)
            .map(|tail| format!("{diffusers}{tail}"))
    })
}

/// The diffusers name of `key` (without the `model.diffusion_model.` prefix), or `None` when
/// the key is not part of a UNet with `layers_per_block` resnets per level.
pub fn map(key: &str, layers_per_block: usize) -> Option<Vec<Target>> {
    let per_level = layers_per_block + 1;
    const FIXED: [(&str, &str); 6] = [
        ("time_embed.0.", "time_embedding.linear_1."),
        ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ];
    if let Some(name) = FIXED
        .iter()
        .find_map(|(ldm, d)| key.strip_prefix(ldm).map(|t| format!("{d}{t}")))
    {
        return Some(whole(name));
    }
    if let Some(rest) = key.strip_prefix("input_blocks.") {
        let (n, rest) = index_and_rest(rest)?;
        if n == 0 {
            return rest
                .strip_prefix("0.")
                .map(|t| whole(format!("conv_in.{t}")));
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
}
