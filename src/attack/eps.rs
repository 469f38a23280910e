//! The `--eps` list: decimals (`0.03`) or fractions (`1/255`), in [0, 1] for
//! L-inf attacks; L2 budgets (fgm, `--norm l2`) may exceed 1.

use crate::error::{Error, Result};

/// One perturbation budget, as written and as a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Eps {
    /// As written (`1/255`).
    pub text: String,
    /// The value the kernels use.
    pub value: f32,
    /// The value in full precision (`1/255` = 0.00392156862745098), for outputs.
    pub exact: f64,
}

impl Eps {
    /// Folder name for `--out`: `eps_<text>` with `/` replaced by `_`.
    pub fn dir_name(&self) -> String {
        format!("eps_{}", self.text.replace('/', "_"))
    }

    /// This eps in 8-bit levels (what `--minimal` searches below), refused
    /// when it is not on the grid.
    pub fn levels(&self) -> Result<u32> {
        let k = (self.exact * 255.0).round();
        if (self.exact * 255.0 - k).abs() > 1e-6 || !(1.0..=255.0).contains(&k) {
            return Err(Error::Usage(format!(
                "--minimal searches the 8-bit grid below --eps, so give an eps on it \
                 between 1/255 and 1 (e.g. 16/255), not {}",
                self.text
            )));
        }
        Ok(k as u32)
    }
}

fn parse_one(item: &str, max: f64) -> Result<Eps> {
    let t = item.trim();
    let bad = |why: &str| {
        Error::Usage(format!(
            "--eps item {t:?}: {why} (write e.g. 0.03 or 1/255)"
        ))
    };
    let value: f64 = match t.split_once('/') {
        Some((a, b)) => {
            let a: f64 = a.trim().parse().map_err(|_| bad("not a number"))?;
            let b: f64 = b.trim().parse().map_err(|_| bad("not a number"))?;
            if b == 0.0 {
                return Err(bad("division by zero"));
            }
            a / b
        }
        None => t.parse().map_err(|_| bad("not a number"))?,
    };
    if !value.is_finite() || !(0.0..=max).contains(&value) {
        return Err(bad(if max == 1.0 {
            "must lie in [0, 1] (pixel units of the [0,1] image; only L2 budgets may exceed 1)"
        } else {
            "must be a finite number >= 0"
        }));
    }
    Ok(Eps {
        text: t.to_string(),
        value: value as f32,
        exact: value,
    })
}

/// Parse a comma-separated list of L-inf budgets in [0, 1]. Duplicates are
/// refused (they would share a folder).
pub fn parse_eps_list(list: &str) -> Result<Vec<Eps>> {
    parse_list(list, 1.0)
}

/// [`parse_eps_list`] for L2 budgets: any finite eps >= 0.
pub fn parse_l2_eps_list(list: &str) -> Result<Vec<Eps>> {
    parse_list(list, f64::MAX)
}

fn parse_list(list: &str, max: f64) -> Result<Vec<Eps>> {
    let items: Vec<Eps> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|t| parse_one(t, max))
        .collect::<Result<_>>()?;
    if items.is_empty() {
        return Err(Error::Usage(
            "--eps is empty; give e.g. --eps 1/255,2/255,4/255".into(),
        ));
    }
    for (i, a) in items.iter().enumerate() {
        if items[..i].iter().any(|b| b.dir_name() == a.dir_name()) {
            return Err(Error::Usage(format!("--eps lists {} twice", a.text)));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_and_fractions() {
        let e = parse_eps_list("0.03, 1/255,0").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].value, 0.03);
        assert_eq!(e[1].value, (1.0f64 / 255.0) as f32);
        assert_eq!(e[1].dir_name(), "eps_1_255");
        assert_eq!(e[2].value, 0.0);
    }

    #[test]
    fn refuses_bad_items() {
        for bad in [
            "", "abc", "1/0", "-0.1", "1.5", "2/1", "nan", "0.1,0.1", "x/255",
        ] {
            assert!(parse_eps_list(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_l2_eps_list("1.5,3").unwrap()[1].exact, 3.0);
        assert!(parse_l2_eps_list("-1").is_err());
    }
}
