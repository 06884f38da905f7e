//! Inputs the cargo-fuzz targets (`fuzz/`) found, kept as regression tests: each goes through
//! the same function its target calls and must give a clear error, never a panic or an
//! oversized allocation. The files live in `tests/fixtures/fuzz/<target>-<short-name>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inspectd_cam::graph::{Attr, Node};
use inspectd_cam::model::heads_from_bytes;
use inspectd_cam::model::preprocess::{decode_image, MAX_IMAGE_ALLOC, MAX_IMAGE_SIDE};
use inspectd_cam::ops;
use inspectd_cam::tensor::{ITensor, Tensor, Value, MAX_ELEMENTS};

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A 682-byte progressive JPEG whose header declares 20551 x 3406 pixels: the decoder used to
/// zero a 210 MB buffer for it before reading any scan data (the `image` target, run with
/// `-malloc_limit_mb=128`). Now the declared size is checked against the decode limits first.
#[test]
fn image_jpeg_with_a_huge_declared_size_is_refused_before_allocating() {
    let bytes = fixture("image-jpeg-huge-declared-size");
    assert_eq!(bytes.len(), 682);
    let err = decode_image(&bytes).unwrap_err();
    assert!(err.contains("limit"), "{err}");
    // 20551 * 3406 * 3 bytes is over the allocation limit.
    const { assert!(20551u64 * 3406 * 3 > MAX_IMAGE_ALLOC) };
}

/// A minimal PNG (IHDR, one IDAT, IEND) of the given size, 8-bit grayscale: the IDAT holds a
/// single stored deflate block with one filter byte per row, all pixels zero.
fn png(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }
    let raw = vec![0u8; (height as usize) * (width as usize + 1)];
    assert!(raw.len() < 65536, "test PNGs stay in one stored block");
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend((raw.len() as u16).to_le_bytes());
    z.extend((!(raw.len() as u16)).to_le_bytes());
    z.extend(&raw);
    z.extend(adler32(&raw).to_be_bytes());
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn image_decode_limits_allow_ordinary_frames_and_refuse_oversized_sides() {
    let ok = decode_image(&png(7, 5)).unwrap();
    assert_eq!(ok.dimensions(), (7, 5));
    // A line-scan frame at the side limit decodes; one pixel more is refused from the header.
    assert_eq!(
        decode_image(&png(MAX_IMAGE_SIDE, 1)).unwrap().dimensions(),
        (MAX_IMAGE_SIDE, 1)
    );
    let err = decode_image(&png(MAX_IMAGE_SIDE + 1, 1)).unwrap_err();
    assert!(err.contains("limit"), "{err}");
    let err = decode_image(&png(1, MAX_IMAGE_SIDE + 1)).unwrap_err();
    assert!(err.contains("limit"), "{err}");
}

#[test]
fn image_shipped_samples_still_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/crack");
    let path = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("a sample PNG");
    let img = decode_image(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(img.dimensions(), (128, 128));
}

// ---- head: ONNX bytes -> graph -> head extraction (constant folding included) ----
//
// Each model is `input -> Relu -> GlobalAveragePool -> Flatten -> Add(., big) -> logits`, where
// `big` is a constant the head folds at extraction: `Expand(ones[1], shp)` or
// `ConstantOfShape(shp)`, with `shp` = [100000, 100000] (10^10 elements: the fold aborted on
// OOM) or [2^40, 2^40] (the element count overflowed usize: an overflow panic). They were run
// through the `head` target's binary; the fold now refuses shapes over `MAX_ELEMENTS`.

#[test]
fn head_models_that_fold_a_huge_constant_give_an_error_not_an_abort() {
    for (name, heads) in [
        ("head-expand-huge.onnx", 4),
        ("head-expand-overflow.onnx", 4),
        ("head-cos-huge.onnx", 3),
        ("head-cos-overflow.onnx", 3),
    ] {
        let bytes = fixture(name);
        // The four layers upstream of the Add (input, r, g, f) need the fold, so their heads are
        // refused and not counted; the heads from logits, big, shp (and `one`, Expand's input)
        // need no fold.
        let n = heads_from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(n, heads, "{name}");
    }
}

fn node(op: &str, attrs: Vec<(&str, Attr)>) -> Node {
    Node {
        name: format!("fuzz_{op}"),
        op_type: op.into(),
        domain: String::new(),
        inputs: vec!["x".into(), "shape".into()],
        outputs: vec!["y".into()],
        attrs: attrs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
        input_elem: vec![None, None],
    }
}

fn forward_err(n: &Node, inputs: &[Value]) -> String {
    let op = ops::build(n, &vec![None; n.inputs.len()], 17).unwrap();
    let refs: Vec<Option<&Value>> = inputs.iter().map(Some).collect();
    match op.forward(&refs) {
        Ok(_) => panic!("{} accepted", n.op_type),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn head_ops_refuse_output_shapes_over_the_element_limit() {
    let one = Value::F(Tensor::new(vec![1], vec![1.0]));
    let shape = |d: Vec<i64>| Value::I(ITensor::vector(d));
    for dims in [vec![100_000, 100_000], vec![1 << 40, 1 << 40]] {
        let e = forward_err(&node("Expand", vec![]), &[one.clone(), shape(dims.clone())]);
        assert!(e.contains("Expand") && e.contains("elements"), "{e}");
        let mut cos = node("ConstantOfShape", vec![]);
        cos.inputs = vec!["shape".into()];
        let e = forward_err(&cos, &[shape(dims)]);
        assert!(
            e.contains("ConstantOfShape") && e.contains("elements"),
            "{e}"
        );
    }
    // Pad amounts that overflow i64 and that exceed the limit.
    let x = Value::F(Tensor::new(vec![1, 1], vec![1.0]));
    let e = forward_err(
        &node("Pad", vec![]),
        &[x.clone(), shape(vec![0, i64::MAX, 0, i64::MAX])],
    );
    assert!(e.contains("overflow"), "{e}");
    let e = forward_err(
        &node("Pad", vec![]),
        &[x.clone(), shape(vec![0, 0, 1 << 30, 0])],
    );
    assert!(e.contains("elements"), "{e}");
    // A Reshape whose target shape overflows when multiplied out.
    let e = forward_err(
        &node("Reshape", vec![]),
        &[x, shape(vec![1 << 40, 1 << 40, 1 << 40])],
    );
    assert!(e.contains("element count"), "{e}");
    // Broadcasting two small tensors to a huge one.
    let a = Value::F(Tensor::zeros(&[100_000, 1]));
    let b = Value::F(Tensor::zeros(&[1, 100_000]));
    let e = forward_err(&node("Add", vec![]), &[a, b]);
    assert!(e.contains("elements"), "{e}");
    const { assert!(100_000usize * 100_000 > MAX_ELEMENTS) };
}

#[test]
fn head_window_attributes_are_bounded_at_build_time() {
    let bad = |op: &str, key: &str, v: Vec<i64>| {
        let mut attrs = vec![(key, Attr::Ints(v))];
        if key != "kernel_shape" && op != "Conv" {
            attrs.push(("kernel_shape", Attr::Ints(vec![2, 2])));
        }
        let n = node(op, attrs);
        match ops::build(&n, &vec![None; 2], 17) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{op} {key} accepted"),
        }
    };
    for op in ["Conv", "MaxPool", "AveragePool"] {
        assert!(bad(op, "pads", vec![0, 0, 1 << 40, 0]).contains("pads"));
        assert!(bad(op, "strides", vec![1, 1 << 40]).contains("strides"));
        assert!(bad(op, "dilations", vec![1 << 40, 1]).contains("dilations"));
    }
    assert!(bad("MaxPool", "kernel_shape", vec![0, 2]).contains("kernel_shape"));
}
