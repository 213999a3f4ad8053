//! A top-k sparse autoencoder (Gao et al. 2024): `z = topk(W_enc (x − b_dec) + b_enc)`,
//! `x̂ = W_dec z + b_dec`, trained by Adam on ‖x − x̂‖² with unit-norm decoder rows (the gradient's
//! radial part removed, rows renormalised after each step). Dead latents (silent for an epoch)
//! are revived by the auxiliary loss: the top `k_aux` dead latents reconstruct the residual error,
//! weighted 1/32. Gradients are written out by hand: the code is sparse, so everything but the
//! encoder's dense product costs O(k · d) per row.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::linalg::{self, axpy, dot, top_k_positive, Code};
use super::{
    normalise_rows, project_out_radial, random_atoms, Adam, DictConfig, DictError, Dictionary,
    Normaliser, OnPoint, Reporter, TrainOptions,
};

const AUX_WEIGHT: f32 = 1.0 / 32.0;
/// The share of the steps over which the rate decays to zero.
const DECAY: f32 = 0.3;

struct Grads {
    enc: Vec<f32>,
    dec: Vec<f32>,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    err: f64,
    active: usize,
    fired: Vec<u32>,
}

pub fn train(
    x: &[f32],
    d: usize,
    config: DictConfig,
    norms: Vec<Normaliser>,
    opts: &TrainOptions,
    on_point: &mut OnPoint<'_>,
) -> Result<Dictionary, DictError> {
    let n = x.len() / d;
    let (m, k) = (opts.atoms, opts.k.min(opts.atoms));
    let k_aux = (d / 2).min(m);
    let w_dec = random_atoms(m, d, opts.seed);
    let mut dict = Dictionary {
        w_enc: w_dec.clone(),
        b_enc: vec![0.0; m],
        ..Dictionary::decoder_only(DictConfig { k, ..config }, norms, w_dec)
    };
    // Larger dictionaries take smaller steps (as Gao et al. scale the rate by 1/√m; here
    // relative to 1,024 atoms).
    let lr = opts.lr * (1024.0 / m as f32).sqrt().min(1.0);
    let mut adam_enc = Adam::new(m * d, lr);
    let mut adam_dec = Adam::new(m * d, lr);
    let mut adam_benc = Adam::new(m, lr);
    let mut adam_bdec = Adam::new(d, lr);
    // Tokens seen when each latent last fired; dead after a whole epoch without.
    let mut last_fired = vec![0u64; m];
    let mut seen = 0u64;
    let window = n as u64;
    let tot: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let batch = opts.batch.clamp(1, n);
    let batches = n.div_ceil(batch);
    let mut report = Reporter::new(tot);
    let mut xb = Vec::with_capacity(batch * d);
    let steps = (opts.epochs.max(1) * batches) as f32;
    let mut step = 0f32;
    'epochs: for epoch in 0..opts.epochs.max(1) {
        order.shuffle(&mut rng);
        for (bi, rows) in order.chunks(batch).enumerate() {
            let b = rows.len();
            // The rate decays linearly to zero over the last DECAY of the steps (of those a time
            // limit leaves, as projected).
            let horizon = report.horizon(opts, steps, step);
            let rate = lr * ((1.0 - step / horizon) / DECAY).clamp(0.0, 1.0);
            step += 1.0;
            for a in [&mut adam_enc, &mut adam_dec, &mut adam_benc, &mut adam_bdec] {
                a.lr = rate;
            }
            xb.clear();
            for &r in rows {
                xb.extend_from_slice(&x[r * d..(r + 1) * d]);
            }
            let xc: Vec<f32> = xb
                .chunks_exact(d)
                .flat_map(|r| r.iter().zip(&dict.b_dec).map(|(v, c)| v - c))
                .collect();
            let mut pre = linalg::matmul_t(&xc, b, &dict.w_enc, m, d);
            pre.chunks_exact_mut(m)
                .for_each(|r| axpy(1.0, &dict.b_enc, r));
            let dead: Vec<bool> = last_fired
                .iter()
                .map(|&t| seen.saturating_sub(t) > window)
                .collect();
            let any_dead = dead.iter().any(|&x| x);
            let scale = 2.0 / b as f32;
            let dict_ref = &dict;
            let parts = linalg::par_chunks(
                b,
                || Grads {
                    enc: vec![0.0; m * d],
                    dec: vec![0.0; m * d],
                    b_enc: vec![0.0; m],
                    b_dec: vec![0.0; d],
                    err: 0.0,
                    active: 0,
                    fired: Vec::new(),
                },
                |g, range| {
                    let mut e = vec![0f32; d];
                    let mut dead_pre = vec![0f32; m];
                    for i in range {
                        let (xi, xci) = (&xb[i * d..(i + 1) * d], &xc[i * d..(i + 1) * d]);
                        let prei = &pre[i * m..(i + 1) * m];
                        let code: Code = top_k_positive(prei, k);
                        // e = x̂ − x
                        e.copy_from_slice(&dict_ref.b_dec);
                        for &(j, v) in &code {
                            axpy(v, dict_ref.atom(j as usize), &mut e);
                        }
                        for (e, &xv) in e.iter_mut().zip(xi) {
                            *e -= xv;
                        }
                        g.err += f64::from(dot(&e, &e));
                        g.active += code.len();
                        let ge: Vec<f32> = e.iter().map(|v| v * scale).collect();
                        axpy(1.0, &ge, &mut g.b_dec);
                        for &(j, v) in &code {
                            let j = j as usize;
                            g.fired.push(j as u32);
                            let row = j * d..(j + 1) * d;
                            axpy(v, &ge, &mut g.dec[row.clone()]);
                            let dv = dot(&ge, dict_ref.atom(j));
                            axpy(dv, xci, &mut g.enc[row.clone()]);
                            g.b_enc[j] += dv;
                            axpy(-dv, &dict_ref.w_enc[row], &mut g.b_dec);
                        }
                        if any_dead {
                            // The dead latents' best attempt at the residual −e.
                            for (j, p) in dead_pre.iter_mut().enumerate() {
                                *p = if dead[j] { prei[j] } else { 0.0 };
                            }
                            let aux = top_k_positive(&dead_pre, k_aux);
                            if aux.is_empty() {
                                continue;
                            }
                            // h = 2α(ê − r)/B with r = −e
                            let mut h = e.clone();
                            for &(j, a) in &aux {
                                axpy(a, dict_ref.atom(j as usize), &mut h);
                            }
                            h.iter_mut().for_each(|v| *v *= AUX_WEIGHT * scale);
                            for &(j, a) in &aux {
                                let j = j as usize;
                                let row = j * d..(j + 1) * d;
                                axpy(a, &h, &mut g.dec[row.clone()]);
                                let da = dot(&h, dict_ref.atom(j));
                                axpy(da, xci, &mut g.enc[row.clone()]);
                                g.b_enc[j] += da;
                                axpy(-da, &dict_ref.w_enc[row], &mut g.b_dec);
                            }
                        }
                    }
                },
            );
            let mut parts = parts.into_iter();
            let mut g = parts.next().expect("at least one share");
            for p in parts {
                axpy(1.0, &p.enc, &mut g.enc);
                axpy(1.0, &p.dec, &mut g.dec);
                axpy(1.0, &p.b_enc, &mut g.b_enc);
                axpy(1.0, &p.b_dec, &mut g.b_dec);
                g.err += p.err;
                g.active += p.active;
                g.fired.extend(p.fired);
            }
            seen += b as u64;
            for &j in &g.fired {
                last_fired[j as usize] = seen;
            }
            project_out_radial(&dict.w_dec, &mut g.dec, d);
            adam_enc.step(&mut dict.w_enc, &g.enc);
            adam_dec.step(&mut dict.w_dec, &g.dec);
            adam_benc.step(&mut dict.b_enc, &g.b_enc);
            adam_bdec.step(&mut dict.b_dec, &g.b_dec);
            normalise_rows(&mut dict.w_dec, d);
            report.add(g.err, b, g.active);
            let over = report.over(opts);
            let last = (epoch + 1 == opts.epochs.max(1) && bi + 1 == batches) || over;
            let dead = || {
                last_fired
                    .iter()
                    .filter(|&&t| seen.saturating_sub(t) > window)
                    .count() as f32
                    / m as f32
            };
            report.step((epoch, bi, batches), last, dead, &mut dict, on_point)?;
            if over {
                break 'epochs;
            }
        }
    }
    Ok(dict)
}
