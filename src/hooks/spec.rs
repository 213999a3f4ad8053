//! The text form of an intervention, as typed on the command line:
//! `blocks.10.mlp.hook_post[123]`, `L10N123=mean`, `L5H3@4`, `blocks.6.hook_resid_post[17]+=8`.

use std::str::FromStr;

use super::intervention::{Intervention, Op};
use super::point::{BlockSite, HookPoint};

/// The grammar, shown with every parse error.
pub const SPEC_FORMS: &str = "expected HOOK[INDICES][@POSITIONS][=zero|=mean|=VALUE|+=VALUE|*=FACTOR], \
e.g. blocks.10.mlp.hook_post[123], blocks.10.mlp.hook_post[123,124]@3, blocks.10.mlp.hook_post[123]=mean, \
blocks.6.hook_resid_post[17]+=8, or the shorthands L10N123 (MLP neuron) and L5H3 (attention head); \
POSITIONS is a list like 3 or 0,2,5 or 2..6";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid intervention `{spec}`: {reason}; {SPEC_FORMS}")]
pub struct SpecError {
    pub spec: String,
    pub reason: String,
}

/// Parses one intervention spec.
pub fn parse(spec: &str) -> Result<Intervention, SpecError> {
    let err = |reason: &str| SpecError {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
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
            Some(list(p).map_err(|r| err(&format!("bad positions: {r}")))?),
        ),
        None => (target, None),
    };
    let (hook, indices) = if let Some((name, rest)) = target.split_once('[') {
        let inner = rest.strip_suffix(']').ok_or_else(|| err("missing `]`"))?;
        let hook: HookPoint = name
            .trim()
            .parse()
            .map_err(|e: super::point::UnknownHookPoint| err(&e.to_string()))?;
        (
            hook,
            Some(list(inner).map_err(|r| err(&format!("bad indices: {r}")))?),
        )
    } else if let Some((hook, index)) = shorthand(target.trim()) {
        (hook, Some(vec![index]))
    } else {
        let hook: HookPoint = target
            .trim()
            .parse()
            .map_err(|e: super::point::UnknownHookPoint| err(&e.to_string()))?;
        (hook, None)
    };
    if indices.as_ref().is_some_and(|i| i.is_empty()) {
        return Err(err("no indices between the brackets"));
    }
    Ok(Intervention {
        hook,
        positions,
        indices,
        op,
    })
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

/// `3`, `0,2,5`, `2..6` (end exclusive), or a mix: `0,4..6`.
fn list(s: &str) -> Result<Vec<usize>, String> {
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
            out.extend(a..b);
        } else {
            out.push(digits(part).ok_or(format!("`{part}` is not a non-negative integer"))?);
        }
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
}
