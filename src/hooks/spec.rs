//! The text form of an intervention, as typed on the command line:
//! `blocks.10.mlp.hook_post[123]`, `L10N123=mean`, `L5H3@4`, `blocks.6.hook_resid_post[17]+=8`.

use std::str::FromStr;

use super::intervention::{Intervention, Op};
use super::point::{BlockSite, HookPoint, Layout};

/// The grammar, shown with every parse error.
pub const SPEC_FORMS: &str = "expected HOOK[INDICES][@POSITIONS][=zero|=mean|=VALUE|+=VALUE|*=FACTOR], \
e.g. blocks.10.mlp.hook_post[123], blocks.10.mlp.hook_post[123,124]@3, blocks.10.mlp.hook_post[123]=mean, \
blocks.6.hook_resid_post[17]+=8, or the shorthands L10N123 (MLP neuron) and L5H3 (attention head); \
POSITIONS is a list like 3 or 0,2,5 or 2..6";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "invalid intervention `{spec}`: {reason}{}",
    if *.syntax { format!("; {SPEC_FORMS}") } else { String::new() }
)]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
    /// The spec is malformed (the message then shows the grammar), rather than naming
    /// something this model does not have.
    pub syntax: bool,
}

/// The most positions or indices a spec may name when no model bounds it.
pub const MAX_LIST: usize = 1 << 20;

/// What a spec's lists are checked against while parsing, before any range is expanded, so
/// that `0..18446744073709551615` is an error and never an allocation.
#[derive(Clone, Copy, Default)]
pub struct Bounds<'a> {
    /// The model's context length: positions lie below it. `None`: below [`MAX_LIST`].
    pub n_ctx: Option<usize>,
    /// The number of units (neurons, dimensions or heads) of a hook point in the model, or why
    /// the point does not exist there. `None`: indices lie below [`MAX_LIST`].
    pub units: Option<&'a dyn Fn(HookPoint) -> Result<usize, String>>,
}

/// Parses one intervention spec without a model (lists bounded by [`MAX_LIST`]).
pub fn parse(spec: &str) -> Result<Intervention, SpecError> {
    parse_bounded(spec, &Bounds::default())
}

/// Parses one intervention spec, checking its hook point, positions and indices against
/// `bounds` (a model's). Lists come back sorted, without repeats.
pub fn parse_bounded(spec: &str, bounds: &Bounds) -> Result<Intervention, SpecError> {
    let fail = |reason: &str, syntax: bool| SpecError {
        spec: spec.to_string(),
        reason: reason.to_string(),
        syntax,
    };
    let err = |reason: &str| fail(reason, true);
    let s = spec.trim();
    // Split off the operation: the first of "+=", "*=", "=" outside brackets.
    let (target, op) = if let Some(i) = s.find("+=") {
        (
            &s[..i],
            Op::Add {
                value: number(&s[i + 2..]).map_err(|r| err(&r))?,
            },
        )
    } else if let Some(i) = s.find("*=") {
        (
            &s[..i],
            Op::Scale {
                factor: number(&s[i + 2..]).map_err(|r| err(&r))?,
            },
        )
    } else if let Some(i) = s.find('=') {
        let value = s[i + 1..].trim();
        let op = match value {
            "zero" | "0" => Op::Zero,
            "mean" => Op::Mean,
            v => Op::Set {
                value: number(v).map_err(|r| err(&r))?,
            },
        };
        (&s[..i], op)
    } else {
        (s, Op::Zero)
    };
    let (target, positions) = match target.split_once('@') {
        Some((t, p)) => (
            t,
            Some(ranges(p).map_err(|r| err(&format!("bad positions: {r}")))?),
        ),
        None => (target, None),
    };
    let (hook, indices) = if let Some((name, rest)) = target.split_once('[') {
        let inner = rest.strip_suffix(']').ok_or_else(|| err("missing `]`"))?;
        let hook: HookPoint = name
            .trim()
            .parse()
            .map_err(|e: super::point::UnknownHookPoint| err(&e.to_string()))?;
        if inner.trim().is_empty() {
            return Err(err("no indices between the brackets"));
        }
        (
            hook,
            Some(ranges(inner).map_err(|r| err(&format!("bad indices: {r}")))?),
        )
    } else if let Some((hook, index)) = shorthand(target.trim()) {
        (hook, Some(vec![(index, index.saturating_add(1))]))
    } else {
        let hook: HookPoint = target
            .trim()
            .parse()
            .map_err(|e: super::point::UnknownHookPoint| err(&e.to_string()))?;
        (hook, None)
    };
    let units = match bounds.units {
        Some(units) => Some(units(hook).map_err(|r| fail(&r, false))?),
        None => None,
    };
    let positions = match positions {
        Some(list) => Some(expand(&list, bounds.n_ctx.unwrap_or(MAX_LIST)).map_err(
            |(first, last)| {
                let what = describe("position", first, last);
                let reason = match bounds.n_ctx {
                    Some(n) => format!(
                        "{what} out of range: the model's context holds {} (positions 0–{})",
                        crate::count(n, "token", "tokens"),
                        n.saturating_sub(1)
                    ),
                    None => format!("{what} out of range: at most {MAX_LIST} positions"),
                };
                fail(&reason, false)
            },
        )?),
        None => None,
    };
    let indices = match indices {
        Some(list) => Some(
            expand(&list, units.unwrap_or(MAX_LIST)).map_err(|(first, last)| {
                let what = describe("index", first, last);
                let reason = match units {
                    Some(n) => {
                        let (one, many) = match hook.layout() {
                            Layout::PosWidth => ("neuron or dimension", "neurons or dimensions"),
                            _ => ("head", "heads"),
                        };
                        format!(
                            "{what} out of range: {hook} has {} (0–{})",
                            crate::count(n, one, many),
                            n.saturating_sub(1)
                        )
                    }
                    None => format!("{what} out of range: at most {MAX_LIST} indices"),
                };
                fail(&reason, false)
            })?,
        ),
        None => None,
    };
    Ok(Intervention {
        hook,
        positions,
        indices,
        op,
    })
}

/// `position 7 is`, `positions 0..100 are`.
fn describe(what: &str, first: usize, last: Option<usize>) -> String {
    match last {
        None => format!("{what} {first} is"),
        Some(end) if what == "index" => format!("indices {first}..{end} are"),
        Some(end) => format!("{what}s {first}..{end} are"),
    }
}

impl FromStr for Intervention {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// `L10N123` → (blocks.10.mlp.hook_post, 123); `L5H3` → (blocks.5.attn.hook_z, 3).
fn shorthand(s: &str) -> Option<(HookPoint, usize)> {
    let rest = s.strip_prefix('L')?;
    let split = rest.find(['N', 'H'])?;
    let layer: usize = digits(&rest[..split])?;
    let index: usize = digits(&rest[split + 1..])?;
    let site = if rest.as_bytes()[split] == b'N' {
        BlockSite::MlpPost
    } else {
        BlockSite::Z
    };
    Some((HookPoint::block(layer, site), index))
}

fn digits(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn number(s: &str) -> Result<f32, String> {
    let s = s.trim();
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a finite number")),
    }
}

/// `3`, `0,2,5`, `2..6` (end exclusive), or a mix: `0,4..6`, as half-open ranges (not
/// expanded: the bounds are checked first).
fn ranges(s: &str) -> Result<Vec<(usize, usize)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (
                digits(a).ok_or(format!("`{part}`"))?,
                digits(b).ok_or(format!("`{part}`"))?,
            );
            if b <= a {
                return Err(format!("empty range `{part}`"));
            }
            out.push((a, b));
        } else {
            let a = digits(part).ok_or(format!("`{part}` is not a non-negative integer"))?;
            out.push((a, a.saturating_add(1)));
        }
    }
    Ok(out)
}

/// The sorted, distinct values of `ranges`, all below `bound`; otherwise the first offending
/// single value `(v, None)` or range `(start, Some(end))`. Never holds more than `bound` values.
fn expand(ranges: &[(usize, usize)], bound: usize) -> Result<Vec<usize>, (usize, Option<usize>)> {
    if let Some(&(a, b)) = ranges.iter().find(|(_, b)| *b > bound) {
        return Err(if b - a <= 1 { (a, None) } else { (a, Some(b)) });
    }
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<usize> = Vec::new();
    for (a, b) in sorted {
        let from = out.last().map_or(a, |&l| a.max(l + 1));
        out.extend(from..b);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp(l: usize) -> HookPoint {
        HookPoint::block(l, BlockSite::MlpPost)
    }

    #[test]
    fn parses_every_documented_form() {
        assert_eq!(
            parse("blocks.10.mlp.hook_post[123]").unwrap(),
            Intervention::zero(mlp(10), vec![123])
        );
        assert_eq!(
            parse("L10N123").unwrap(),
            Intervention::zero(mlp(10), vec![123])
        );
        assert_eq!(
            parse("blocks.10.mlp.hook_post[123]=mean").unwrap().op,
            Op::Mean
        );
        assert_eq!(parse("L10N123=4.5").unwrap().op, Op::Set { value: 4.5 });
        let at = parse("blocks.10.mlp.hook_post[123,124]@3").unwrap();
        assert_eq!(
            (at.indices, at.positions),
            (Some(vec![123, 124]), Some(vec![3]))
        );
        let head = parse("L5H3").unwrap();
        assert_eq!(
            (head.hook, head.indices.clone()),
            (HookPoint::block(5, BlockSite::Z), Some(vec![3]))
        );
        assert_eq!(parse("blocks.5.attn.hook_z[3]").unwrap(), head);
        let steer = parse("blocks.6.hook_resid_post[17]+=8").unwrap();
        assert_eq!(
            (steer.hook, steer.op),
            (
                HookPoint::block(6, BlockSite::ResidPost),
                Op::Add { value: 8.0 }
            )
        );
        assert_eq!(
            parse("L1N2@0,4..6*=2").unwrap().positions,
            Some(vec![0, 4, 5])
        );
        assert_eq!(parse("blocks.2.hook_resid_pre").unwrap().indices, None);
    }

    #[test]
    fn malformed_specs_say_what_is_expected() {
        for bad in [
            "",
            "L10",
            "L10X3",
            "blocks.10.mlp.hook_post[",
            "blocks.10.mlp.hook_post[]",
            "blocks.10.mlp.hook_post[a]",
            "blocks.99.nope[1]",
            "L1N2=abc",
            "L1N2@",
            "L1N2+=inf",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("expected HOOK[INDICES]"),
                "{bad}: {e}"
            );
        }
    }

    fn units(hook: HookPoint) -> Result<usize, String> {
        match hook.layer() {
            Some(l) if l >= 30 => Err(format!(
                "{hook}: layer {l} does not exist: the model has 30 layers (0–29)"
            )),
            _ if hook.layout() == Layout::PosWidth => Ok(1536),
            _ => Ok(9),
        }
    }

    fn model_bounds() -> Bounds<'static> {
        Bounds {
            n_ctx: Some(8192),
            units: Some(&units),
        }
    }

    #[test]
    fn huge_ranges_are_errors_that_name_the_limit_not_allocations() {
        let e = parse("L1N2@0..18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1048576 positions"), "{e}");
        let e = parse("blocks.1.mlp.hook_post[0..18446744073709551615]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1048576 indices"), "{e}");
        let e = parse("L1N18446744073709551615").unwrap_err().to_string();
        assert!(
            e.contains("index 18446744073709551615 is out of range"),
            "{e}"
        );

        let b = model_bounds();
        let e = parse_bounded("L1N2@0..18446744073709551615", &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("positions 0..18446744073709551615 are out of range")
                && e.contains("the model's context holds 8192 tokens (positions 0–8191)")
                && !e.contains("expected HOOK"),
            "{e}"
        );
        let e = parse_bounded("L1N2@9000", &b).unwrap_err().to_string();
        assert!(e.contains("position 9000 is out of range"), "{e}");
        let e = parse_bounded("blocks.3.mlp.hook_post[1..99999]", &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("indices 1..99999 are out of range")
                && e.contains("blocks.3.mlp.hook_post has 1536 neurons or dimensions (0–1535)"),
            "{e}"
        );
        let e = parse_bounded("L5H9", &b).unwrap_err().to_string();
        assert!(
            e.contains("index 9 is out of range") && e.contains("has 9 heads (0–8)"),
            "{e}"
        );
        let e = parse_bounded("L99N1", &b).unwrap_err().to_string();
        assert!(
            e.contains("layer 99 does not exist: the model has 30 layers (0–29)"),
            "{e}"
        );
        // Within the bounds, a whole range is fine and repeats do not multiply it.
        let all = parse_bounded("L1N2@0..8192", &b).unwrap();
        assert_eq!(all.positions, Some((0..8192).collect()));
        let repeated = vec!["0..8192"; 1000].join(",");
        let many = parse_bounded(&format!("L1N2@{repeated}"), &b).unwrap();
        assert_eq!(many.positions.unwrap().len(), 8192);
        assert_eq!(
            parse_bounded("blocks.1.mlp.hook_post[7,3,3,4..6]@5,1", &b)
                .map(|iv| (iv.indices, iv.positions)),
            Ok((Some(vec![3, 4, 5, 7]), Some(vec![1, 5])))
        );
    }
}
