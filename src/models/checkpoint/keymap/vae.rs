//! The autoencoder: `first_stage_model.*` (LDM's `AutoencoderKL`) → diffusers' `AutoencoderKL`.
//!
//! LDM numbers the decoder's levels from the bottom (`decoder.up.0` is the last to run);
//! diffusers numbers them in the order they run.

use super::{index_and_rest, whole, Target};

fn resnet(rest: &str) -> String {
    match rest.strip_prefix("nin_shortcut.") {
        Some(tail) => format!("conv_shortcut.{tail}"),
        None => rest.to_string(),
    }
}

fn mid(rest: &str) -> Option<String> {
    if let Some(r) = rest.strip_prefix("block_1.") {
        return Some(format!("mid_block.resnets.0.{}", resnet(r)));
    }
    if let Some(r) = rest.strip_prefix("block_2.") {
        return Some(format!("mid_block.resnets.1.{}", resnet(r)));
    }
    let r = rest.strip_prefix("attn_1.")?;
    const ATTN: [(&str, &str); 5] = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ];
    ATTN.iter().find_map(|(ldm, d)| {
        r.strip_prefix(ldm)
            .map(|t| format!("mid_block.attentions.0.{d}{t}"))
    })
}

/// The diffusers name of `key` (without the `first_stage_model.` prefix) in a VAE whose
/// decoder has `levels` levels.
pub fn map(key: &str, levels: usize) -> Option<Vec<Target>> {
    for same in ["quant_conv.", "post_quant_conv."] {
        if key.starts_with(same) {
            return Some(whole(key.to_string()));
        }
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let name = if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        rest.to_string()
    } else if let Some(t) = rest.strip_prefix("norm_out.") {
        format!("conv_norm_out.{t}")
    } else if let Some(t) = rest.strip_prefix("mid.") {
        mid(t)?
    } else if let (Some(t), "encoder") = (rest.strip_prefix("down."), side) {
        let (i, t) = index_and_rest(t)?;
        if let Some(t) = t.strip_prefix("block.") {
            let (j, t) = index_and_rest(t)?;
            format!("down_blocks.{i}.resnets.{j}.{}", resnet(t))
        } else {
            format!(
                "down_blocks.{i}.downsamplers.0.conv.{}",
                t.strip_prefix("downsample.conv.")?
            )
        }
    } else if let (Some(t), "decoder") = (rest.strip_prefix("up."), side) {
        let (i, t) = index_and_rest(t)?;
        let level = levels.checked_sub(i + 1)?;
        if let Some(t) = t.strip_prefix("block.") {
            let (j, t) = index_and_rest(t)?;
            format!("up_blocks.{level}.resnets.{j}.{}", resnet(t))
        } else {
            format!(
                "up_blocks.{level}.upsamplers.0.conv.{}",
                t.strip_prefix("upsample.conv.")?
            )
        }
    } else {
        return None;
    };
    Some(whole(format!("{side}.{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_vae_names() {
        for (ldm, diffusers) in [
            (
                "encoder.down.0.block.1.conv2.weight",
                "encoder.down_blocks.0.resnets.1.conv2.weight",
            ),
            (
                "encoder.down.2.downsample.conv.bias",
                "encoder.down_blocks.2.downsamplers.0.conv.bias",
            ),
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.bias",
                "decoder.mid_block.attentions.0.to_out.0.bias",
            ),
            (
                "decoder.mid.block_2.norm1.weight",
                "decoder.mid_block.resnets.1.norm1.weight",
            ),
            (
                "decoder.up.3.block.2.conv1.weight",
                "decoder.up_blocks.0.resnets.2.conv1.weight",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            ("decoder.norm_out.bias", "decoder.conv_norm_out.bias"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            let v = map(ldm, 4).unwrap_or_else(|| panic!("{ldm}"));
            assert_eq!(v[0].0, diffusers, "{ldm}");
        }
        assert!(map("loss.logvar", 4).is_none());
        assert!(map("decoder.up.4.block.0.conv1.weight", 4).is_none());
    }
}
