use std::time::Instant;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: tractbench RUNS H W model.onnx [model.onnx ...]");
        std::process::exit(2);
    }
    let runs: usize = args[1].parse()?;
    let h: usize = args[2].parse()?;
    let w: usize = args[3].parse()?;
    let paths = &args[4..];
    let mut models = Vec::new();
    for p in paths {
        let t0 = Instant::now();
        let m = tract_onnx::onnx()
            .model_for_path(p)?
            .with_input_fact(0, f32::fact([1, 3, h, w]).into())?
            .into_optimized()?
            .into_runnable()?;
        println!("loaded {} in {:.1} ms", p, t0.elapsed().as_secs_f64() * 1e3);
        models.push(m);
    }
    let mut seed: u32 = 12345;
    let input: Tensor = tract_ndarray::Array4::<f32>::from_shape_fn((1, 3, h, w), |_| {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        ((seed >> 8) as f32 / (1u32 << 24) as f32) * 4.0 - 2.0
    })
    .into();
    // warm-up
    for m in &models {
        for _ in 0..3 {
            let out = m.run(tvec!(input.clone().into()))?;
            std::hint::black_box(&out);
        }
    }
    // round-robin so shared-CPU noise hits every model alike
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    for _ in 0..runs {
        for (i, m) in models.iter().enumerate() {
            let inp = input.clone();
            let t0 = Instant::now();
            let out = m.run(tvec!(inp.into()))?;
            times[i].push(t0.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(&out);
        }
    }
    let mut meds = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = t[t.len() / 2];
        meds.push(med);
        println!(
            "{:<50} median {:8.3} ms  min {:8.3}  p90 {:8.3}  (n={})",
            p, med, t[0], t[(t.len() * 9) / 10], t.len()
        );
    }
    if meds.len() >= 2 {
        for i in 1..meds.len() {
            println!("speedup {} vs {}: {:.2}x", paths[i], paths[0], meds[0] / meds[i]);
        }
    }
    Ok(())
}
