//! The tolerance checks of tests/common themselves: a check that cannot fail proves nothing.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{assert_close, assert_max_abs, assert_rel};

/// The panic message of `f`, or `None` if it passed.
fn failure(f: impl FnOnce()) -> Option<String> {
    catch_unwind(AssertUnwindSafe(f)).err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[test]
fn nan_and_infinity_fail_every_check() {
    let want = vec![1.0f32, -2.0, 3.0];
    let nan = vec![f32::NAN; 3];
    let mut one_inf = want.clone();
    one_inf[1] = f32::INFINITY;
    for (got, want) in [
        (&nan, &want),
        (&want, &nan),
        (&nan, &nan),
        (&one_inf, &want),
    ] {
        let e = failure(|| assert_max_abs("x", got, want, 1e9)).expect("max_abs rejects");
        assert!(e.contains("not finite"), "{e}");
        assert!(failure(|| assert_rel("x", got, want, 1e9)).is_some());
        assert!(failure(|| assert_close("x", got, want, 1e9, 1e9)).is_some());
    }
}

#[test]
fn a_small_element_cannot_hide_behind_the_largest() {
    // The largest value sets the old "1e-4 of the largest" scale (1e-4 here); a 5% error on an
    // element at 1% of the largest is 5e-4 away and must fail.
    let want = vec![1.0f32, 0.01, -0.5, 0.0];
    let mut got = want.clone();
    got[1] *= 1.05;
    let e = failure(|| assert_close("small", &got, &want, 1e-4, 1e-3)).expect("5% fails");
    assert!(e.contains("at 1 got"), "{e}");
    // Rounding-sized errors pass: 1e-3 relative on large values, 1e-4 of the scale near zero.
    let got: Vec<f32> = vec![1.0 + 9e-4, 0.01 + 1e-5, -0.5 - 4e-4, 9e-5];
    assert_close("rounding", &got, &want, 1e-4, 1e-3);
    // The boundary is inclusive and exact-equal arrays pass, zeros included.
    assert_close("equal", &want, &want, 0.0, 0.0);
    assert!(failure(|| assert_close("zero scale", &[1e-30], &[0.0], 1e-4, 1e-3)).is_some());
}

#[test]
fn max_abs_reports_the_worst_element() {
    assert_max_abs("ok", &[1.0, 2.0], &[1.0, 2.0005], 1e-3);
    let e =
        failure(|| assert_max_abs("bad", &[1.0, 2.0, 3.0], &[1.0, 2.1, 3.0], 1e-3)).expect("fails");
    assert!(e.contains("at 1"), "{e}");
    assert!(failure(|| assert_max_abs("len", &[1.0], &[1.0, 2.0], 1.0)).is_some());
}
