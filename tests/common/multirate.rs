//! The small multi-rate denoisers the stream tests run: the quickstart's frame codec (frames of
//! 8, 8 channels, state 4, one block) and a two-level U-Net (factors 4 and 2, width 4, LRU
//! state 4). A test file includes it with `#[path = "common/multirate.rs"] mod multirate;`.

use lrnnx::train::denoiser::{
    quickstart_denoiser, quickstart_lru_kwargs, unet_denoiser, QuickstartSizes,
};
use lrnnx::train::network::StageSpec;

/// `[("codec", spec), ("unet", spec)]`: the two denoisers' stage lists, each taking 1 input
/// channel.
pub fn small_multirate_denoisers() -> [(&'static str, Vec<StageSpec>); 2] {
    let codec = quickstart_denoiser(&QuickstartSizes {
        frame: 8,
        channels: 8,
        state: 4,
        blocks: 1,
    })
    .0;
    let unet = unet_denoiser(&[4, 2], 4, &|w| quickstart_lru_kwargs(w, 4));
    [("codec", codec), ("unet", unet)]
}
