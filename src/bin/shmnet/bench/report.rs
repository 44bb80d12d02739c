//! The JSON lines `shmnet bench` prints: medians of repeated runs and
//! their ratio to the kernel path.

use super::Res;

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

pub(super) fn list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|&x| num(x)).collect();
    format!("[{}]", items.join(","))
}

/// Runs `shm` and `kernel` `reps` times each; returns the JSON line.
pub(super) fn measure(
    head: &str,
    unit: &str,
    extra: &str,
    reps: usize,
    mut shm: impl FnMut() -> Res<f64>,
    mut kernel: impl FnMut() -> Res<f64>,
) -> Res<String> {
    let mut s = Vec::with_capacity(reps);
    let mut k = Vec::with_capacity(reps);
    for _ in 0..reps {
        s.push(shm()?);
        k.push(kernel()?);
    }
    let (sr, kr) = (s.clone(), k.clone());
    let (sm, km) = (median(&mut s), median(&mut k));
    Ok(format!(
        "{{{head},\"shmnet\":{},\"kernel\":{},\"unit\":\"{unit}\",\"ratio\":{}{extra},\"reps\":{reps},\"shmnet_runs\":{},\"kernel_runs\":{}}}",
        num(sm),
        num(km),
        num(sm / km),
        list(&sr),
        list(&kr)
    ))
}
