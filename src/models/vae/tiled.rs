//! Tiled VAE decode and encode, for images whose full-resolution feature maps do not fit in
//! memory (an untiled SD decode needs ~4 GiB of working memory at 1024², ~16 GiB at 2048²).
//!
//! Only the full-resolution part is tiled. The decoder's `conv_in` and `mid_block` (and the
//! encoder's `mid_block` to `conv_out`) run on the whole latent map: it is small (a 2048² image
//! is 256² latents), and the mid-block attention is global, so it must see everything.
//!
//! Each tile computes a *core* of the output plus a *halo* of context around it, as wide as the
//! convolutions from there on can see (derived from the blocks, see `Decoder::halos`), so with
//! the same normalisation a core is exactly what the untiled pass computes there: no seams,
//! nothing to blend. The halo shrinks as the tile goes through the blocks (the context already
//! used is cropped away), which keeps the widest, costliest levels close to the core's size.
//!
//! What a halo cannot fix is the group norms: each normalises with the mean and variance of the
//! whole feature map, and a tile's own differ (a sky tile is brighter than the image), which
//! shifts tones from tile to tile: diffusers' `enable_tiling` has this flaw. So every tile here
//! normalises with the same whole-image statistics ([`Norms`]), found in two steps
//! ([`NormStats::Measured`]):
//!
//! 1. An estimate: the same tiled pass over the latent map (after the mid block) subsampled to
//!    half size, recording each group norm's sums over its tiles' cores. A quarter of the work;
//!    natural images look alike at half and full scale, and so do the statistics. Every other
//!    pixel, not 2×2 averages: averaging removes the fine texture that the convolutions respond
//!    to, and the variances with it (on SD 1.5's architecture with random weights and noisy
//!    latents, 12/255 off on average instead of 1.3/255).
//! 2. One pass over the full-size tiles normalised with the estimate, recording the sums again,
//!    now at full size; the pass that writes the output uses those.
//!
//! Exact statistics would need one pass over the tiles per group norm (each norm's input
//! depends on every earlier norm's statistics): ~25 for SD's decoder. Measured on two VAEs,
//! as (mean, max) difference from the untiled decode in 1/255 (tests/vae_tiled.rs; the bundled
//! model's trained VAE decoding a sky over textured ground, 2×2 tiles; SD 1.5's architecture
//! with random weights decoding noisy two-tone latents, 512², 2×2 tiles):
//!
//! | statistics                                     | bundled VAE | SD 1.5-sized |
//! |------------------------------------------------|-------------|--------------|
//! | each tile's own (diffusers)                    | 10.4, 79    | 15.7, 125 (at 1024²) |
//! | one pass with the tiles' own, then applied     | 7.0, 52     |              |
//! | half-size estimate only ([`NormStats::Estimated`]) | 1.0, 4.0 | 1.3, 10.0    |
//! | estimate, then measured ([`NormStats::Measured`])  | 1.3, 4.7 | 0.3, 1.9     |
//!
//! With the pipeline's 64-latent tiles the bundled VAE does better (512² to 1024², 2×2 to 4×4
//! tiles: estimated at most 0.8, 3.0; measured 0.8, 2.4). The SD 1.5-sized one at 1024² (the
//! issue's acceptance size; 2×2 tiles): estimated 1.0–1.2, 7.9–8.9 over two draws of the
//! latents, past the 8/255; measured 0.13, 0.75. Time, against the untiled decode's
//! 96 s there: each tile's own 1.1×, estimated 1.25×, measured 2.4×. The estimate must
//! itself be a real image: with tiles under ~32 latents, the estimate's own
//! estimate (it is tiled too when large) ends on a thumbnail and the error grows.

use std::ops::Range;

use candle_core::{Module, Result, Tensor};

use super::blocks::ResnetBlock;
use super::coder::{Decoder, Encoder};
use crate::ops::{GroupNorm, GroupStats, GroupSums, Normalised};

/// How a tiled decode or encode splits the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileConfig {
    /// Side of a tile's core (what it writes to the output), in latent pixels; an encode's tiles
    /// are this times the downscale factor in image pixels. Maps are split into equal tiles of
    /// at most this side. Keep it at 32 or more (see the module's documentation).
    pub tile: usize,
    pub stats: NormStats,
}

impl Default for TileConfig {
    /// 64 latents (512 px for SD): a tile's working memory is then about that of a 512² decode
    /// (~0.75 GiB for SD); measured statistics.
    fn default() -> Self {
        Self {
            tile: 64,
            stats: NormStats::Measured,
        }
    }
}

/// What the group norms of a tiled pass normalise with (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormStats {
    /// Each tile its own, as diffusers tiles: one pass, but tones shift between tiles.
    Tile,
    /// The whole image's, estimated from a half-size pass: a quarter more work.
    Estimated,
    /// The estimate, then measured at full size in one more pass over the tiles.
    Measured,
}

/// How the group norms of one pass normalise.
pub enum Norms<'a> {
    /// With the map's own statistics: the untiled path.
    Own,
    /// One tile of a larger map.
    Tile {
        /// The whole map's statistics for each group norm, in call order; norms past its end
        /// use the tile's own.
        apply: &'a [GroupStats],
        /// Where each group norm adds the sums of its input over the core, in call order.
        record: Option<&'a mut Vec<GroupSums>>,
        /// The tile's core in the current map's own coordinates (rows, columns).
        core: (Range<usize>, Range<usize>),
        /// Group norms run so far in this tile: the index into `apply` and `record`.
        layer: usize,
    },
}

impl<'a> Norms<'a> {
    fn tile(apply: &'a [GroupStats], record: Option<&'a mut Vec<GroupSums>>) -> Self {
        Norms::Tile {
            apply,
            record,
            core: (0..0, 0..0),
            layer: 0,
        }
    }

    fn set_core(&mut self, area: (Range<usize>, Range<usize>)) {
        if let Norms::Tile { core, .. } = self {
            *core = area;
        }
    }

    /// `silu(norm(xs))`, normalised as this pass says, for a convolution to read.
    pub fn silu(&mut self, norm: &GroupNorm, xs: &Tensor) -> Result<Normalised> {
        let Norms::Tile {
            apply,
            record,
            core,
            layer,
        } = self
        else {
            return norm.deferred_silu(xs, None);
        };
        let i = *layer;
        *layer += 1;
        if let Some(record) = record.as_deref_mut() {
            if record.len() <= i {
                record.resize_with(i + 1, GroupSums::default);
            }
            norm.add_sums(xs, core.0.clone(), core.1.clone(), &mut record[i])?;
        }
        norm.deferred_silu(xs, apply.get(i))
    }
}

/// A half-open interval of pixels on one axis, in the current level's pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// `by` more each side, within `0..limit`, the start rounded down to a multiple of `align`.
    fn grown(self, by: usize, limit: usize, align: usize) -> Span {
        Span {
            start: self.start.saturating_sub(by) / align * align,
            end: (self.end + by).min(limit),
        }
    }

    /// Relative to `outer`, which contains it.
    fn within(self, outer: Span) -> Range<usize> {
        self.start - outer.start..self.end - outer.start
    }

    fn doubled(self) -> Span {
        Span {
            start: 2 * self.start,
            end: 2 * self.end,
        }
    }

    /// What a stride-2 level keeps (sizes round down, as the downsampler's output does).
    fn halved(self) -> Span {
        Span {
            start: self.start / 2,
            end: self.end / 2,
        }
    }
}

/// Rows and columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Area {
    rows: Span,
    cols: Span,
}

impl Area {
    fn of(xs: &Tensor) -> Result<Area> {
        let (_, _, h, w) = xs.dims4()?;
        Ok(Area {
            rows: Span { start: 0, end: h },
            cols: Span { start: 0, end: w },
        })
    }

    fn map(self, f: impl Fn(Span) -> Span) -> Area {
        Area {
            rows: f(self.rows),
            cols: f(self.cols),
        }
    }

    fn grown(self, by: usize, whole: Area, align: usize) -> Area {
        Area {
            rows: self.rows.grown(by, whole.rows.end, align),
            cols: self.cols.grown(by, whole.cols.end, align),
        }
    }

    fn within(self, outer: Area) -> (Range<usize>, Range<usize>) {
        (self.rows.within(outer.rows), self.cols.within(outer.cols))
    }
}

/// `xs`, which covers `has`, cut down to `want` (inside `has`).
fn crop(xs: &Tensor, has: Area, want: Area) -> Result<Tensor> {
    let (rows, cols) = want.within(has);
    xs.narrow(2, rows.start, rows.len())?
        .narrow(3, cols.start, cols.len())
}

/// `n` pixels as equal spans of at most `tile` (no thin leftover tile at the end).
fn split(n: usize, tile: usize) -> Vec<Span> {
    let count = n.div_ceil(tile.max(1)).max(1);
    (0..count)
        .map(|i| Span {
            start: i * n / count,
            end: (i + 1) * n / count,
        })
        .collect()
}

/// The tiles' cores over an `h`×`w` map: rows of tiles, each left to right.
fn tiles(h: usize, w: usize, tile: usize) -> Vec<Vec<Area>> {
    let cols = split(w, tile);
    split(h, tile)
        .into_iter()
        .map(|rows| cols.iter().map(|&cols| Area { rows, cols }).collect())
        .collect()
}

/// Runs `run(core, norms)` for every tile of `grid`, each normalising with `stats` (its own
/// statistics for norms past the end), and puts the cores together. With `record`, also returns
/// each group norm's sums over the cores: the whole map's statistics, for a larger map's tiles.
fn in_tiles(
    grid: &[Vec<Area>],
    stats: &[GroupStats],
    record: bool,
    mut run: impl FnMut(Area, &mut Norms) -> Result<Tensor>,
) -> Result<(Tensor, Vec<GroupSums>)> {
    let mut sums = Vec::new();
    let mut rows = Vec::with_capacity(grid.len());
    for row in grid {
        let mut cores = Vec::with_capacity(row.len());
        for &tile in row {
            let mut norms = Norms::tile(stats, record.then_some(&mut sums));
            cores.push(run(tile, &mut norms)?);
        }
        rows.push(Tensor::cat(&cores, 3)?);
    }
    Ok((Tensor::cat(&rows, 2)?, sums))
}

fn stats_of(sums: &[GroupSums]) -> Vec<GroupStats> {
    sums.iter().map(GroupSums::stats).collect()
}

/// A tiled pass over the tiles of `grid`, normalised as `cfg.stats` says; `half()` is the same
/// pass over the map at half size, returning its statistics' sums; `tile(core, norms)` computes
/// one tile's core. With `record`, also returns the sums over the whole map.
fn run_tiled(
    grid: &[Vec<Area>],
    cfg: &TileConfig,
    record: bool,
    half: impl FnOnce() -> Result<Vec<GroupSums>>,
    mut tile: impl FnMut(Area, &mut Norms) -> Result<Tensor>,
) -> Result<(Tensor, Vec<GroupSums>)> {
    let mut stats = Vec::new();
    // One tile is the untiled pass, with its own (exact) statistics.
    if cfg.stats != NormStats::Tile && grid.iter().flatten().count() > 1 {
        stats = stats_of(&half()?);
        // An estimate's own estimate is not measured: it would cost a full pass for little.
        if cfg.stats == NormStats::Measured && !record {
            stats = stats_of(&in_tiles(grid, &stats, true, &mut tile)?.1);
        }
    }
    in_tiles(grid, &stats, record, tile)
}

/// Every other row and column, from the first: a half-size map with the same kind of texture.
fn half_size(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (h, w) = (h / 2, w / 2);
    xs.narrow(2, 0, 2 * h)?
        .narrow(3, 0, 2 * w)?
        .reshape((b, c, h, 2, w, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((b, c, h, w))
}

fn check(cfg: &TileConfig) -> Result<()> {
    if cfg.tile == 0 {
        candle_core::bail!("tiled VAE: the tile size must be at least 1 latent pixel");
    }
    Ok(())
}

impl Decoder {
    /// The context each side, in its own pixels, that exact output needs at the input of each
    /// up block, and last at `conv_norm_out`'s input (for `conv_out`). An upsampler's 3×3
    /// convolution reads at most one input pixel each side of the pixels it doubles.
    fn halos(&self) -> Vec<usize> {
        let n = self.up_blocks.len();
        let mut halos = vec![1usize; n + 1];
        for (i, block) in self.up_blocks.iter().enumerate().rev() {
            let after = if block.upsamples() {
                1 + halos[i + 1].div_ceil(2)
            } else {
                halos[i + 1]
            };
            halos[i] = ResnetBlock::REACH * block.resnet_count() + after;
        }
        halos
    }

    /// The up blocks and output head over `h` (the mid block's output, the whole latent map)
    /// in tiles; see the module's documentation.
    pub fn tail_tiled(&self, h: &Tensor, cfg: &TileConfig) -> Result<Tensor> {
        check(cfg)?;
        Ok(self.tail_tiled_with(h, cfg, &self.halos(), false)?.0)
    }

    /// [`Self::tail_tiled`], and with `record` each group norm's sums over the whole map.
    fn tail_tiled_with(
        &self,
        h: &Tensor,
        cfg: &TileConfig,
        halos: &[usize],
        record: bool,
    ) -> Result<(Tensor, Vec<GroupSums>)> {
        let (_, _, lh, lw) = h.dims4()?;
        run_tiled(
            &tiles(lh, lw, cfg.tile),
            cfg,
            record,
            || Ok(self.tail_tiled_with(&half_size(h)?, cfg, halos, true)?.1),
            |core, norms| self.tail_tile(h, core, halos, norms),
        )
    }

    /// One tile's core, in image pixels.
    fn tail_tile(
        &self,
        h: &Tensor,
        core: Area,
        halos: &[usize],
        norms: &mut Norms,
    ) -> Result<Tensor> {
        let mut whole = Area::of(h)?;
        let (mut core, mut has, mut xs) = (core, whole, h.clone());
        for (i, block) in self.up_blocks.iter().enumerate() {
            let want = core.grown(halos[i], whole, 1);
            xs = crop(&xs, has, want)?;
            has = want;
            norms.set_core(core.within(has));
            xs = block.forward_with(&xs, norms)?;
            if block.upsamples() {
                (whole, core, has) = (
                    whole.map(Span::doubled),
                    core.map(Span::doubled),
                    has.map(Span::doubled),
                );
            }
        }
        let want = core.grown(halos[self.up_blocks.len()], whole, 1);
        xs = crop(&xs, has, want)?;
        norms.set_core(core.within(want));
        let out = self
            .conv_out
            .forward_normalised(&norms.silu(&self.conv_norm_out, &xs)?)?;
        crop(&out, want, core)
    }
}

/// An encode's tiles: cores on the latent grid, in image pixels. The last ones reach the
/// image's edge when its size is not a multiple of `f` (the latents round down there, as the
/// untiled encode's do).
fn enc_grid(image: &Tensor, f: usize, tile: usize) -> Result<Vec<Vec<Area>>> {
    let whole = Area::of(image)?;
    let to_image = |s: Span, image: Span| Span {
        start: s.start * f,
        end: if s.end == image.end / f {
            image.end
        } else {
            s.end * f
        },
    };
    Ok(tiles(whole.rows.end / f, whole.cols.end / f, tile)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|a| Area {
                    rows: to_image(a.rows, whole.rows),
                    cols: to_image(a.cols, whole.cols),
                })
                .collect()
        })
        .collect())
}

impl Encoder {
    /// Image pixels per latent pixel.
    fn downscale(&self) -> usize {
        1 << self.down_blocks.iter().filter(|b| b.downsamples()).count()
    }

    /// The context each side, in its own pixels, that exact output needs at the input of each
    /// down block, and last after them (none: the tiled part ends there). A downsampler (3×3,
    /// stride 2, one zero row and column padded at the bottom and right) reads up to one input
    /// pixel past the pixels it halves.
    fn halos(&self) -> Vec<usize> {
        let n = self.down_blocks.len();
        let mut halos = vec![0; n + 1];
        for (i, block) in self.down_blocks.iter().enumerate().rev() {
            let after = if block.downsamples() {
                1 + 2 * halos[i + 1]
            } else {
                halos[i + 1]
            };
            halos[i] = ResnetBlock::REACH * block.resnet_count() + after;
        }
        halos
    }

    /// `conv_in` and the down blocks over `image` in tiles: the features at latent resolution
    /// that [`Encoder::tail`] takes; see the module's documentation.
    pub fn down_tiled(&self, image: &Tensor, cfg: &TileConfig) -> Result<Tensor> {
        check(cfg)?;
        Ok(self.down_tiled_with(image, cfg, &self.halos(), false)?.0)
    }

    /// [`Self::down_tiled`], and with `record` each group norm's sums over the whole image.
    fn down_tiled_with(
        &self,
        image: &Tensor,
        cfg: &TileConfig,
        halos: &[usize],
        record: bool,
    ) -> Result<(Tensor, Vec<GroupSums>)> {
        let f = self.downscale();
        run_tiled(
            &enc_grid(image, f, cfg.tile)?,
            cfg,
            record,
            || {
                Ok(self
                    .down_tiled_with(&half_size(image)?, cfg, halos, true)?
                    .1)
            },
            |core, norms| self.down_tile(image, core, f, halos, norms),
        )
    }

    /// One tile's core of the down blocks' output. Every level's crop starts on a multiple of
    /// the downsampling still to come, so the tile's stride-2 grids are the image's.
    fn down_tile(
        &self,
        image: &Tensor,
        core: Area,
        f: usize,
        halos: &[usize],
        norms: &mut Norms,
    ) -> Result<Tensor> {
        let mut whole = Area::of(image)?;
        let has = core.grown(1 + halos[0], whole, f);
        let mut xs = self.conv_in.forward(&crop(image, whole, has)?)?;
        let (mut core, mut has, mut align) = (core, has, f);
        for (i, block) in self.down_blocks.iter().enumerate() {
            let want = core.grown(halos[i], whole, align);
            xs = crop(&xs, has, want)?;
            has = want;
            norms.set_core(core.within(has));
            xs = block.forward_with(&xs, norms)?;
            if block.downsamples() {
                (whole, core, has) = (
                    whole.map(Span::halved),
                    core.map(Span::halved),
                    has.map(Span::halved),
                );
                align /= 2;
            }
        }
        crop(&xs, has, core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_into_equal_tiles_that_cover_the_map() {
        let spans = split(130, 64);
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].start, 0);
        assert_eq!(spans[2].end, 130);
        for w in spans.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(spans.iter().all(|s| (43..=44).contains(&(s.end - s.start))));
        assert_eq!(split(64, 64), vec![Span { start: 0, end: 64 }]);
    }

    #[test]
    fn a_grown_span_stays_in_the_map_and_aligned() {
        let s = Span { start: 40, end: 64 };
        assert_eq!(s.grown(13, 100, 8), Span { start: 24, end: 77 });
        assert_eq!(s.grown(50, 70, 1), Span { start: 0, end: 70 });
        assert_eq!(s.within(Span { start: 24, end: 77 }), 16..40);
    }

    use std::path::Path;

    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    use super::super::{Vae, VaeConfig};
    use crate::ops::test_util::{randn, rel_diff};

    /// sd-tiny-b's VAE: three levels (16/32/32 channels, a `conv_shortcut`), two resnets per
    /// level, 8 groups.
    fn tiny_vae() -> Vae {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny-b/vae");
        let config_path = dir.join("config.json");
        let config = VaeConfig::from_file(&config_path).unwrap();
        let tensors = candle_core::safetensors::load(
            dir.join("diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        Vae::new(vb, config, &config_path).unwrap()
    }

    /// Each group norm's statistics over the whole map, from an untiled run that records them.
    fn exact_stats(run: impl FnOnce(&mut Norms) -> Tensor) -> (Tensor, Vec<GroupStats>) {
        let mut sums = Vec::new();
        let out = run(&mut Norms::tile(&[], Some(&mut sums)));
        (out, stats_of(&sums))
    }

    /// With the whole map's statistics the halos make every tile's core exact: tiled equals
    /// untiled, for odd sizes that do not divide into the tiles and a batch of two. This is the
    /// check that the halos cover what the convolutions see and that the crops line up.
    #[test]
    fn tiles_with_the_whole_maps_statistics_match_the_untiled_pass() {
        let vae = tiny_vae();
        let dec = &vae.decoder;
        let latents = randn(&[2, 4, 19, 13]);
        let h = dec.head(&vae.unscale(&latents).unwrap()).unwrap();
        let want = dec.tail(&h).unwrap();
        let halos = dec.halos();
        let (recorded, stats) = exact_stats(|norms| {
            dec.tail_tile(&h, Area::of(&h).unwrap(), &halos, norms)
                .unwrap()
        });
        // Recording the statistics does not change the untiled pass.
        assert_eq!(rel_diff(&recorded, &want), 0.0);
        assert_eq!(stats.len(), 3 * 3 * 2 + 1); // three resnets per up block, norm_out
        let grid = tiles(19, 13, 5);
        let (got, _) = in_tiles(&grid, &stats, false, |core, norms| {
            dec.tail_tile(&h, core, &halos, norms)
        })
        .unwrap();
        assert!(rel_diff(&got, &want) < 1e-5, "{}", rel_diff(&got, &want));

        let enc = &vae.encoder;
        // 75 and 50 are not multiples of the downscale factor (4): the latents round down.
        let image = randn(&[2, 3, 75, 50]);
        let mut want = enc.conv_in.forward(&image).unwrap();
        for block in &enc.down_blocks {
            want = block.forward(&want).unwrap();
        }
        let halos = enc.halos();
        let (_, stats) = exact_stats(|norms| {
            enc.down_tile(&image, Area::of(&image).unwrap(), 4, &halos, norms)
                .unwrap()
        });
        assert_eq!(stats.len(), 3 * 2 * 2);
        let (got, _) = in_tiles(
            &enc_grid(&image, 4, 5).unwrap(),
            &stats,
            false,
            |core, norms| enc.down_tile(&image, core, 4, &halos, norms),
        )
        .unwrap();
        assert_eq!(got.dims(), want.dims());
        assert!(rel_diff(&got, &want) < 1e-5, "{}", rel_diff(&got, &want));
    }

    /// One tile covering the map is the untiled pass, bit for bit.
    #[test]
    fn one_tile_is_the_untiled_pass() {
        let vae = tiny_vae();
        let latents = randn(&[1, 4, 12, 10]);
        let cfg = TileConfig {
            tile: 12,
            ..Default::default()
        };
        let want = vae.decode(&latents).unwrap();
        assert_eq!(
            rel_diff(&vae.decode_tiled(&latents, &cfg).unwrap(), &want),
            0.0
        );
        let image = randn(&[1, 3, 48, 40]);
        let want = vae.encode(&image).unwrap();
        assert_eq!(
            rel_diff(&vae.encode_tiled(&image, &cfg).unwrap(), &want),
            0.0
        );
        let zero = TileConfig { tile: 0, ..cfg };
        assert!(vae.decode_tiled(&latents, &zero).is_err());
    }

    /// Odd sizes (the half-size estimate rounds down) decode and encode to the untiled shapes.
    #[test]
    fn odd_sizes_tile_to_the_untiled_shapes() {
        let vae = tiny_vae();
        let cfg = TileConfig {
            tile: 6,
            ..Default::default()
        };
        let latents = randn(&[1, 4, 19, 13]);
        let want = vae.decode(&latents).unwrap();
        assert_eq!(
            vae.decode_tiled(&latents, &cfg).unwrap().dims(),
            want.dims()
        );
        let image = randn(&[1, 3, 75, 50]);
        let want = vae.encode(&image).unwrap();
        assert_eq!(vae.encode_tiled(&image, &cfg).unwrap().dims(), want.dims());
    }
}
