#![no_main]
//! Frame bytes (PNG, JPEG, BMP) → decode → fit to a model input → normalized tensor.
use inspectd_cam::model::preprocess::{decode_image, fit, to_tensor};
use inspectd_cam::model::{ColorOrder, InputSpec, Layout, ResizeMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = decode_image(data) else { return };
    // Keep each run bounded: a header may declare a huge image.
    if (img.width() as u64) * (img.height() as u64) > 2048 * 2048 {
        return;
    }
    for (w, h, layout, color, resize) in [
        (128, 128, Layout::NCHW, ColorOrder::RGB, ResizeMode::Stretch),
        (96, 64, Layout::NHWC, ColorOrder::BGR, ResizeMode::CenterCrop),
    ] {
        let spec = InputSpec {
            name: "input".into(),
            width: w,
            height: h,
            layout,
            color,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            resize,
        };
        let (fitted, _) = fit(&img, &spec);
        let t = to_tensor(&fitted, &spec);
        assert_eq!(t.data().len(), 3 * w as usize * h as usize);
        assert!(t.data().iter().all(|v| v.is_finite()));
    }
});
