//! The Euclidean projection onto a simplex cut to boxes: how every simplex
//! group (weights that sum to 1) is made feasible, by the agent and by the
//! baselines it is compared with alike.

/// Euclidean projection of `y` onto `{x : sum x = 1, lo_i <= x_i <= hi_i}`.
///
/// The solution is `x_i = clamp(y_i - lambda, lo_i, hi_i)` for the `lambda`
/// where the sum is 1 (the KKT conditions), found by bisection on that
/// monotone sum. Renormalising instead can push a weight out of its box.
/// The boxes must admit a point: `sum lo <= 1 <= sum hi`.
pub fn project_simplex(y: &mut [f64], lo: &[f64], hi: &[f64]) {
    debug_assert!(lo.iter().sum::<f64>() <= 1.0 + 1e-9 && hi.iter().sum::<f64>() >= 1.0 - 1e-9);
    let sum_at = |lambda: f64| -> f64 { y.iter().zip(lo).zip(hi).map(|((&v, &l), &h)| (v - lambda).clamp(l, h)).sum() };
    // At lambda_lo every coordinate sits at its upper bound, at lambda_hi at its lower.
    let mut lambda_lo = y.iter().zip(hi).map(|(v, h)| v - h).fold(f64::INFINITY, f64::min);
    let mut lambda_hi = y.iter().zip(lo).map(|(v, l)| v - l).fold(f64::NEG_INFINITY, f64::max);
    for _ in 0..200 {
        let mid = 0.5 * (lambda_lo + lambda_hi);
        if mid <= lambda_lo || mid >= lambda_hi {
            break;
        }
        if sum_at(mid) > 1.0 {
            lambda_lo = mid;
        } else {
            lambda_hi = mid;
        }
    }
    let lambda = 0.5 * (lambda_lo + lambda_hi);
    for ((v, &l), &h) in y.iter_mut().zip(lo).zip(hi) {
        *v = (*v - lambda).clamp(l, h);
    }
    // The bisection leaves a residual of a few ulps; hand it to a coordinate
    // with room so the sum is 1 to rounding.
    let residual = 1.0 - y.iter().sum::<f64>();
    if residual != 0.0 {
        if let Some(i) = (0..y.len()).find(|&i| {
            let v = y[i] + residual;
            v >= lo[i] && v <= hi[i]
        }) {
            y[i] += residual;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Boxes inside [0, 1] that admit a point of the simplex, with a point to project.
    fn case() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, Vec<f64>)> {
        (2usize..6).prop_flat_map(|n| {
            (prop::collection::vec((0.0f64..0.5, 0.0f64..0.6), n), prop::collection::vec(-1.0f64..2.0, n))
                .prop_filter_map("boxes must admit sum = 1", |(bounds, y)| {
                    let lo: Vec<f64> = bounds.iter().map(|b| b.0 / 2.0).collect();
                    let hi: Vec<f64> = bounds.iter().map(|b| (b.0 / 2.0 + b.1).min(1.0)).collect();
                    (lo.iter().sum::<f64>() <= 1.0 && hi.iter().sum::<f64>() >= 1.0).then_some((y, lo, hi))
                })
        })
    }

    proptest! {
        #[test]
        fn projection_sums_to_one_inside_the_boxes((y, lo, hi) in case()) {
            let mut x = y.clone();
            project_simplex(&mut x, &lo, &hi);
            prop_assert!((x.iter().sum::<f64>() - 1.0).abs() < 1e-9, "sum {}", x.iter().sum::<f64>());
            for i in 0..x.len() {
                prop_assert!(x[i] >= lo[i] && x[i] <= hi[i], "x[{}] = {} outside [{}, {}]", i, x[i], lo[i], hi[i]);
            }
        }

        /// A real projection: y - x is the same lambda on every free coordinate,
        /// at most lambda where x sits on its lower bound, at least where on its upper
        /// (x_i = clamp(y_i - lambda, lo_i, hi_i)).
        #[test]
        fn projection_meets_the_kkt_conditions((y, lo, hi) in case()) {
            let mut x = y.clone();
            project_simplex(&mut x, &lo, &hi);
            let free: Vec<usize> = (0..x.len()).filter(|&i| x[i] > lo[i] + 1e-9 && x[i] < hi[i] - 1e-9).collect();
            if let Some(&f) = free.first() {
                let lambda = y[f] - x[f];
                for i in 0..x.len() {
                    let g = y[i] - x[i];
                    if free.contains(&i) { prop_assert!((g - lambda).abs() < 1e-7); }
                    else if (x[i] - lo[i]).abs() <= 1e-9 { prop_assert!(g <= lambda + 1e-7); }
                    else { prop_assert!(g >= lambda - 1e-7); }
                }
            }
        }

        #[test]
        fn a_feasible_point_is_its_own_projection((y, lo, hi) in case()) {
            let mut x = y.clone();
            project_simplex(&mut x, &lo, &hi);
            let mut again = x.clone();
            project_simplex(&mut again, &lo, &hi);
            for i in 0..x.len() { prop_assert!((x[i] - again[i]).abs() < 1e-9); }
        }
    }

    #[test]
    fn renormalising_would_leave_the_box_but_projection_does_not() {
        // Renormalising (0.6, 0.6, 0.1) gives 0.4615 for the third weight... fine,
        // but (0.6, 0.15, 0.15) -> (0.667, 0.167, 0.167) leaves momentum's [0.2, 0.6].
        let (lo, hi) = ([0.2, 0.15, 0.15], [0.6, 0.45, 0.45]);
        let mut x = [0.6, 0.15, 0.15];
        let renormalised = x[0] / x.iter().sum::<f64>();
        assert!(renormalised > hi[0]);
        project_simplex(&mut x, &lo, &hi);
        assert!((x.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(x[0] <= 0.6 && x[1] >= 0.15 && x[2] >= 0.15, "{x:?}");
    }
}
