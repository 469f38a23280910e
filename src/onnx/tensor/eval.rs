//! Ops on constant tensors, evaluated on the CPU while importing (shape
//! arithmetic, broadcasting binary ops, reshapes, gathers, slices, casts...).
//! (About 650 lines: one small function per ONNX op, kept together as the
//! converters' CPU library.)

use super::*;

/// Normalises an axis in `[-rank, rank)` (or `[-rank-1, rank]` with `extra`).
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok(a as usize)
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

fn check_size(dims: &[usize]) -> Result<usize, String> {
    numel(dims)
        .filter(|&n| n <= MAX_CONST_ELEMS)
        .ok_or_else(|| format!("result {} is too large", fmt_dims(dims)))
}

/// Most elements an op that can grow its input (broadcast, Expand,
/// ConstantOfShape, Gather) may create beyond its inputs' size.
const MAX_GROWN: usize = 1 << 22;

/// [`check_size`] for ops whose result may be larger than their inputs: at
/// most the largest input or [`MAX_GROWN`].
fn check_grow(dims: &[usize], inputs: &[usize]) -> Result<usize, String> {
    let n = check_size(dims)?;
    let limit = inputs.iter().copied().max().unwrap_or(0).max(MAX_GROWN);
    if n > limit {
        return Err(format!("result {} is too large", fmt_dims(dims)));
    }
    Ok(n)
}

/// Numpy-style broadcast of two shapes.
pub(crate) fn broadcast_dims(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for k in 0..r {
        let da = if k + a.len() >= r {
            a[k + a.len() - r]
        } else {
            1
        };
        let db = if k + b.len() >= r {
            b[k + b.len() - r]
        } else {
            1
        };
        out[k] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!(
                "shapes {} and {} do not broadcast",
                fmt_dims(a),
                fmt_dims(b)
            ));
        };
    }
    Ok(out)
}

/// For each element of `out` (row-major), the index into a tensor of `dims`
/// broadcast to `out`.
fn broadcast_index(dims: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let off = r - dims.len();
    let s = strides(dims);
    let total: usize = out.iter().product();
    let mut idx = Vec::with_capacity(total);
    let mut pos = vec![0usize; r];
    for _ in 0..total {
        let mut i = 0;
        for k in 0..dims.len() {
            if dims[k] != 1 {
                i += pos[k + off] * s[k];
            }
        }
        idx.push(i);
        for k in (0..r).rev() {
            pos[k] += 1;
            if pos[k] < out[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    idx
}

/// `a` broadcast to `dims` (which must be a broadcast of `a.dims`), as f32.
pub(crate) fn expand_f32(a: &Const, dims: &[usize]) -> Result<Vec<f32>, String> {
    let out = broadcast_dims(&a.dims, dims)?;
    if out != dims {
        return Err(format!(
            "{} does not broadcast to {}",
            fmt_dims(&a.dims),
            fmt_dims(dims)
        ));
    }
    check_size(dims)?;
    let v = a.to_f32();
    Ok(broadcast_index(&a.dims, dims)
        .into_iter()
        .map(|i| v[i])
        .collect())
}

/// An element-wise binary op on constants, numpy broadcasting. Integer inputs
/// give integer results (division truncates); a float input makes it float.
pub(crate) fn binary(op: &str, a: &Const, b: &Const) -> Result<Const, String> {
    let (dims, ia, ib) = broadcast_pair(a, b)?;
    match (&a.data, &b.data) {
        (Data::I64(x), Data::I64(y)) => {
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                let (p, q) = (x[i], y[j]);
                let v = match op {
                    "Add" => p.checked_add(q),
                    "Sub" => p.checked_sub(q),
                    "Mul" => p.checked_mul(q),
                    "Div" => {
                        if q == 0 {
                            return Err("integer division by zero".into());
                        }
                        p.checked_div(q)
                    }
                    _ => return Err(format!("{op} is not a binary op")),
                };
                out.push(v.ok_or("integer overflow")?);
            }
            Ok(Const::i64(dims, out))
        }
        _ => {
            let x = a.to_f32();
            let y = b.to_f32();
            let f: fn(f32, f32) -> f32 = match op {
                "Add" => |p, q| p + q,
                "Sub" => |p, q| p - q,
                "Mul" => |p, q| p * q,
                "Div" => |p, q| p / q,
                _ => return Err(format!("{op} is not a binary op")),
            };
            let out = ia.iter().zip(&ib).map(|(&i, &j)| f(x[i], y[j])).collect();
            Ok(Const::f32(dims, out))
        }
    }
}

/// `Mod`: integers as Python's `%` (the result takes the divisor's sign;
/// ONNX `fmod = 0`), or with `fmod` the remainder of a truncating division
/// (C's `fmod`, the only form ONNX allows for floats).
pub(crate) fn modulo(a: &Const, b: &Const, fmod: bool) -> Result<Const, String> {
    let (dims, ia, ib) = broadcast_pair(a, b)?;
    match (&a.data, &b.data) {
        (Data::I64(x), Data::I64(y)) => {
            let mut out = Vec::with_capacity(ia.len());
            for (&i, &j) in ia.iter().zip(&ib) {
                let (p, q) = (x[i], y[j]);
                if q == 0 {
                    return Err("integer modulo by zero".into());
                }
                let r = p.checked_rem(q).ok_or("integer overflow")?;
                out.push(if fmod || r == 0 || (r < 0) == (q < 0) {
                    r
                } else {
                    r + q
                });
            }
            Ok(Const::i64(dims, out))
        }
        _ if !fmod => Err("Mod of floats needs fmod = 1".into()),
        _ => {
            let (x, y) = (a.to_f32(), b.to_f32());
            let out = ia.iter().zip(&ib).map(|(&i, &j)| x[i] % y[j]).collect();
            Ok(Const::f32(dims, out))
        }
    }
}

/// `Equal`, `Less`, `Greater`: booleans as integers 0 and 1 (advex's constants
/// have no boolean type; `Where` and `Not` read any non-zero as true).
pub(crate) fn compare(op: &str, a: &Const, b: &Const) -> Result<Const, String> {
    let (dims, ia, ib) = broadcast_pair(a, b)?;
    let cmp: fn(f64, f64) -> bool = match op {
        "Equal" => |p, q| p == q,
        "Less" => |p, q| p < q,
        "Greater" => |p, q| p > q,
        _ => return Err(format!("{op} is not a comparison")),
    };
    let (x, y) = (a.to_f64(), b.to_f64());
    let out = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| cmp(x[i], y[j]) as i64)
        .collect();
    Ok(Const::i64(dims, out))
}

/// `Not` of booleans held as integers.
pub(crate) fn not(a: &Const) -> Result<Const, String> {
    let v = a.to_f64();
    Ok(Const::i64(
        a.dims.clone(),
        v.iter().map(|&x| (x == 0.0) as i64).collect(),
    ))
}

/// `Where(cond, x, y)`, broadcast over all three.
pub(crate) fn where_(cond: &Const, x: &Const, y: &Const) -> Result<Const, String> {
    let dims = broadcast_dims(&broadcast_dims(&cond.dims, &x.dims)?, &y.dims)?;
    check_grow(&dims, &[cond.len(), x.len(), y.len()])?;
    let (ic, ix, iy) = (
        broadcast_index(&cond.dims, &dims),
        broadcast_index(&x.dims, &dims),
        broadcast_index(&y.dims, &dims),
    );
    let c = cond.to_f64();
    match (&x.data, &y.data) {
        (Data::I64(a), Data::I64(b)) => Ok(Const::i64(
            dims,
            ic.iter()
                .zip(ix.iter().zip(&iy))
                .map(|(&k, (&i, &j))| if c[k] != 0.0 { a[i] } else { b[j] })
                .collect(),
        )),
        _ => {
            let (a, b) = (x.to_f32(), y.to_f32());
            Ok(Const::f32(
                dims,
                ic.iter()
                    .zip(ix.iter().zip(&iy))
                    .map(|(&k, (&i, &j))| if c[k] != 0.0 { a[i] } else { b[j] })
                    .collect(),
            ))
        }
    }
}

/// A broadcast shape and, per element, each operand's index.
type Broadcast = (Vec<usize>, Vec<usize>, Vec<usize>);

/// The broadcast shape of two operands and, per element, each one's index.
fn broadcast_pair(a: &Const, b: &Const) -> Result<Broadcast, String> {
    let dims = broadcast_dims(&a.dims, &b.dims)?;
    check_grow(&dims, &[a.len(), b.len()])?;
    let ia = broadcast_index(&a.dims, &dims);
    let ib = broadcast_index(&b.dims, &dims);
    Ok((dims, ia, ib))
}

/// Resolves a Reshape target (`0` copies the input's dim unless `allowzero`,
/// one `-1` is inferred).
pub(crate) fn reshape_target(
    input: &[usize],
    target: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total = numel(input).ok_or("input too large")?;
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (k, &t) in target.iter().enumerate() {
        match t {
            -1 => {
                if infer.is_some() {
                    return Err(format!("shape {} has more than one -1", fmt_dims(target)));
                }
                infer = Some(k);
                out.push(1);
            }
            0 if !allowzero => {
                let d = *input.get(k).ok_or_else(|| {
                    format!(
                        "shape {} copies dim {k} (0) but the input {} has no such dim",
                        fmt_dims(target),
                        fmt_dims(input)
                    )
                })?;
                out.push(d);
            }
            t if t >= 0 => out.push(t as usize),
            _ => return Err(format!("shape {} has a negative size", fmt_dims(target))),
        }
    }
    let known = numel(&out).ok_or("target too large")?;
    if let Some(k) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!(
                "cannot reshape {} ({total} elements) to {}",
                fmt_dims(input),
                fmt_dims(target)
            ));
        }
        out[k] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {} ({total} elements) to {}",
            fmt_dims(input),
            fmt_dims(target)
        ));
    }
    Ok(out)
}

/// Output dims of Unsqueeze.
pub(crate) fn unsqueeze_dims(dims: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let r = dims.len() + axes.len();
    let mut ax = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, r)?;
        if ax.contains(&a) {
            return Err(format!("axis {a} is repeated"));
        }
        ax.push(a);
    }
    let mut it = dims.iter();
    Ok((0..r)
        .map(|k| {
            if ax.contains(&k) {
                1
            } else {
                *it.next().unwrap_or(&1)
            }
        })
        .collect())
}

/// Output dims of Squeeze (`axes` empty: every 1).
pub(crate) fn squeeze_dims(dims: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    if axes.is_empty() {
        return Ok(dims.iter().copied().filter(|&d| d != 1).collect());
    }
    let mut ax = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, dims.len())?;
        if dims[a] != 1 {
            return Err(format!(
                "cannot squeeze axis {a} of {}: its size is not 1",
                fmt_dims(dims)
            ));
        }
        ax.push(a);
    }
    Ok(dims
        .iter()
        .enumerate()
        .filter(|(k, _)| !ax.contains(k))
        .map(|(_, &d)| d)
        .collect())
}

/// Gather along `axis` with (possibly negative) indices.
pub(crate) fn gather(data: &Const, indices: &Const, axis: i64) -> Result<Const, String> {
    if data.dims.is_empty() {
        return Err("Gather needs data of rank at least 1".into());
    }
    let axis = norm_axis(axis, data.dims.len())?;
    let idx = indices.to_i64()?;
    let n = data.dims[axis] as i64;
    let mut fixed = Vec::with_capacity(idx.len());
    for &i in &idx {
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(format!("index {i} is out of range for a dim of size {n}"));
        }
        fixed.push(j as usize);
    }
    let outer: usize = data.dims[..axis].iter().product();
    let inner: usize = data.dims[axis + 1..].iter().product();
    let mut dims = data.dims[..axis].to_vec();
    dims.extend_from_slice(&indices.dims);
    dims.extend_from_slice(&data.dims[axis + 1..]);
    check_grow(&dims, &[data.len(), indices.len()])?;
    let mut pick = Vec::with_capacity(outer * fixed.len() * inner);
    for o in 0..outer {
        for &j in &fixed {
            let base = (o * data.dims[axis] + j) * inner;
            pick.extend(base..base + inner);
        }
    }
    Ok(data.with_data_like(dims, &pick))
}

/// Concatenation along `axis`.
pub(crate) fn concat(parts: &[&Const], axis: i64) -> Result<Const, String> {
    let first = parts.first().ok_or("Concat has no inputs")?;
    let r = first.dims.len();
    let axis = norm_axis(axis, r)?;
    let float = parts.iter().any(|p| matches!(p.data, Data::F32(_)));
    let mut dims = first.dims.clone();
    dims[axis] = 0;
    for p in parts {
        if p.dims.len() != r
            || p.dims
                .iter()
                .enumerate()
                .any(|(k, &d)| k != axis && d != first.dims[k])
        {
            return Err(format!(
                "cannot concatenate {} with {} along axis {axis}",
                fmt_dims(&first.dims),
                fmt_dims(&p.dims)
            ));
        }
        dims[axis] += p.dims[axis];
    }
    check_size(&dims)?;
    let outer: usize = first.dims[..axis].iter().product();
    let mut f = Vec::new();
    let mut i = Vec::new();
    let fv: Vec<Vec<f32>> = if float {
        parts.iter().map(|p| p.to_f32()).collect()
    } else {
        Vec::new()
    };
    for o in 0..outer {
        for (k, p) in parts.iter().enumerate() {
            let chunk: usize = p.dims[axis..].iter().product();
            let range = o * chunk..(o + 1) * chunk;
            if float {
                f.extend_from_slice(&fv[k][range]);
            } else if let Data::I64(v) = &p.data {
                i.extend_from_slice(&v[range]);
            }
        }
    }
    Ok(if float {
        Const::f32(dims, f)
    } else {
        Const::i64(dims, i)
    })
}

/// Transpose with a permutation (default: reversed).
pub(crate) fn transpose(a: &Const, perm: Option<&[i64]>) -> Result<Const, String> {
    let r = a.dims.len();
    let perm: Vec<usize> = match perm {
        None => (0..r).rev().collect(),
        Some(p) => {
            if p.len() != r {
                return Err(format!("perm {} does not match rank {r}", fmt_dims(p)));
            }
            let mut v = Vec::with_capacity(r);
            for &x in p {
                let x = norm_axis(x, r)?;
                if v.contains(&x) {
                    return Err(format!("perm {} repeats an axis", fmt_dims(p)));
                }
                v.push(x);
            }
            v
        }
    };
    let dims: Vec<usize> = perm.iter().map(|&k| a.dims[k]).collect();
    let s = strides(&a.dims);
    let total = a.len();
    let mut pick = Vec::with_capacity(total);
    let mut pos = vec![0usize; r];
    for _ in 0..total {
        pick.push((0..r).map(|k| pos[k] * s[perm[k]]).sum());
        for k in (0..r).rev() {
            pos[k] += 1;
            if pos[k] < dims[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    Ok(a.with_data_like(dims, &pick))
}

/// Slice with starts/ends/axes/steps as ONNX defines them (clamped).
pub(crate) fn slice(
    a: &Const,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Const, String> {
    let r = a.dims.len();
    if starts.len() != ends.len() {
        return Err("starts and ends differ in length".into());
    }
    let axes: Vec<usize> = match axes {
        Some(ax) => ax
            .iter()
            .map(|&x| norm_axis(x, r))
            .collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    if axes.len() != starts.len() {
        return Err("axes and starts differ in length".into());
    }
    let mut lo = vec![0i64; r];
    let mut step = vec![1i64; r];
    let mut count: Vec<usize> = a.dims.clone();
    for (k, &ax) in axes.iter().enumerate() {
        let d = a.dims[ax] as i64;
        let st = steps.and_then(|s| s.get(k).copied()).unwrap_or(1);
        if st == 0 {
            return Err("slice step 0".into());
        }
        let fix = |v: i64, lo_b: i64, hi_b: i64| {
            let v = if v < 0 { v.saturating_add(d) } else { v };
            v.max(lo_b).min(hi_b)
        };
        let (s, e) = if d == 0 {
            (0, 0)
        } else if st > 0 {
            (fix(starts[k], 0, d), fix(ends[k], 0, d))
        } else {
            (fix(starts[k], 0, d - 1), fix(ends[k], -1, d - 1))
        };
        let (s1, e1, st1) = (s as i128, e as i128, st as i128);
        let n = if st1 > 0 {
            if e1 > s1 {
                (e1 - s1 + st1 - 1) / st1
            } else {
                0
            }
        } else if s1 > e1 {
            (s1 - e1 - st1 - 1) / -st1
        } else {
            0
        };
        lo[ax] = s;
        step[ax] = st;
        count[ax] = n as usize;
    }
    let s = strides(&a.dims);
    let total = check_size(&count)?;
    let mut pick = Vec::with_capacity(total);
    let mut pos = vec![0usize; r];
    for _ in 0..total {
        let mut i = 0i64;
        for k in 0..r {
            i += (lo[k] + pos[k] as i64 * step[k]) * s[k] as i64;
        }
        pick.push(i as usize);
        for k in (0..r).rev() {
            pos[k] += 1;
            if pos[k] < count[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    Ok(a.with_data_like(count, &pick))
}

/// Cast to an ONNX data type (floats or integers).
pub(crate) fn cast(a: &Const, to: i64) -> Result<Const, String> {
    use tensor_proto::DataType as D;
    let to = i32::try_from(to).map_err(|_| format!("Cast to unknown type {to}"))?;
    let dt = D::try_from(to).map_err(|_| format!("Cast to unknown type {to}"))?;
    Ok(match dt {
        D::Float | D::Double | D::Float16 | D::Bfloat16 => Const::f32(a.dims.clone(), a.to_f32()),
        D::Int64 | D::Int32 | D::Int16 | D::Int8 | D::Uint8 | D::Uint16 | D::Uint32 | D::Uint64 => {
            let v = match &a.data {
                Data::I64(v) => v.clone(),
                Data::F32(v) => v
                    .iter()
                    .map(|&x| {
                        if x.is_finite() {
                            Ok(x.trunc() as i64)
                        } else {
                            Err(format!("cannot cast {x} to an integer"))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            };
            Const::i64(a.dims.clone(), v)
        }
        D::Bool => Const::i64(
            a.dims.clone(),
            a.to_f64().iter().map(|&x| (x != 0.0) as i64).collect(),
        ),
        other => return Err(format!("Cast to {} is not supported", other.as_str_name())),
    })
}

/// A reshaped copy (the element count must match).
pub(crate) fn reshape(a: &Const, dims: Vec<usize>) -> Result<Const, String> {
    if numel(&dims) != Some(a.len()) {
        return Err(format!(
            "cannot reshape {} to {}",
            fmt_dims(&a.dims),
            fmt_dims(&dims)
        ));
    }
    Ok(a.reshaped(dims))
}

/// `a` broadcast to `dims` (Expand).
pub(crate) fn expand(a: &Const, shape: &[i64]) -> Result<Const, String> {
    let mut target = Vec::with_capacity(shape.len());
    for &s in shape {
        target
            .push(usize::try_from(s).map_err(|_| format!("bad Expand shape {}", fmt_dims(shape)))?);
    }
    let dims = broadcast_dims(&a.dims, &target)?;
    check_grow(&dims, &[a.len()])?;
    let pick = broadcast_index(&a.dims, &dims);
    Ok(a.with_data_like(dims, &pick))
}

/// ConstantOfShape.
pub(crate) fn constant_of_shape(shape: &[i64], value: Option<&Const>) -> Result<Const, String> {
    let mut dims = Vec::with_capacity(shape.len());
    for &s in shape {
        dims.push(usize::try_from(s).map_err(|_| format!("bad shape {}", fmt_dims(shape)))?);
    }
    let n = check_grow(&dims, &[])?;
    Ok(match value {
        Some(v) if v.len() == 1 => match &v.data {
            Data::F32(x) => Const::f32(dims, vec![x[0]; n]),
            Data::I64(x) => Const::i64(dims, vec![x[0]; n]),
        },
        Some(_) => return Err("ConstantOfShape value must hold one element".into()),
        None => Const::f32(dims, vec![0.0; n]),
    })
}

/// Element-wise unary ops on constants.
pub(crate) fn unary(op: &str, a: &Const) -> Result<Const, String> {
    Ok(match (op, &a.data) {
        ("Neg", Data::I64(v)) => Const::i64(
            a.dims.clone(),
            v.iter()
                .map(|&x| x.checked_neg().ok_or("integer overflow"))
                .collect::<Result<_, _>>()?,
        ),
        ("Neg", _) => Const::f32(a.dims.clone(), a.to_f32().iter().map(|x| -x).collect()),
        ("Sqrt", _) => Const::f32(
            a.dims.clone(),
            a.to_f32().iter().map(|x| x.sqrt()).collect(),
        ),
        ("Reciprocal", _) => {
            Const::f32(a.dims.clone(), a.to_f32().iter().map(|x| 1.0 / x).collect())
        }
        ("Floor", Data::F32(v)) => {
            Const::f32(a.dims.clone(), v.iter().map(|x| x.floor()).collect())
        }
        ("Ceil", Data::F32(v)) => Const::f32(a.dims.clone(), v.iter().map(|x| x.ceil()).collect()),
        ("Floor" | "Ceil", Data::I64(_)) => a.reshaped(a.dims.clone()),
        _ => return Err(format!("{op} is not a unary op")),
    })
}

/// GatherND with `batch_dims` 0.
pub(crate) fn gather_nd(data: &Const, indices: &Const) -> Result<Const, String> {
    let q = indices.dims.len();
    let last = *indices
        .dims
        .last()
        .ok_or("GatherND indices must have rank >= 1")?;
    if last > data.dims.len() {
        return Err(format!(
            "GatherND index tuples of length {last} for data of rank {}",
            data.dims.len()
        ));
    }
    let idx = indices.to_i64()?;
    let mut dims = indices.dims[..q - 1].to_vec();
    dims.extend_from_slice(&data.dims[last..]);
    check_grow(&dims, &[data.len(), indices.len()])?;
    let s = strides(&data.dims);
    let inner: usize = data.dims[last..].iter().product();
    let tuples = idx
        .len()
        .checked_div(last)
        .unwrap_or_else(|| numel(&indices.dims[..q - 1]).unwrap_or(0));
    let mut pick = Vec::with_capacity(tuples * inner);
    for t in 0..tuples {
        let mut base = 0usize;
        for j in 0..last {
            let d = data.dims[j] as i64;
            let v = idx[t * last + j];
            let v = if v < 0 { v + d } else { v };
            if v < 0 || v >= d {
                return Err(format!(
                    "GatherND index {} is out of range for a dim of size {d}",
                    idx[t * last + j]
                ));
            }
            base += v as usize * s[j];
        }
        pick.extend(base..base + inner);
    }
    Ok(data.with_data_like(dims, &pick))
}

/// For a mean over `axes` (normalised, any order) of a tensor of `dims`: the
/// output dims and, per output element, the input elements it averages.
pub(crate) fn reduce_groups(
    dims: &[usize],
    axes: &[usize],
    keepdims: bool,
) -> Result<(Vec<usize>, Vec<Vec<usize>>), String> {
    let r = dims.len();
    let out_full: Vec<usize> = (0..r)
        .map(|k| if axes.contains(&k) { 1 } else { dims[k] })
        .collect();
    let out_dims: Vec<usize> = if keepdims {
        out_full.clone()
    } else {
        (0..r)
            .filter(|k| !axes.contains(k))
            .map(|k| dims[k])
            .collect()
    };
    let total = check_size(dims)?;
    let n_out = numel(&out_full).unwrap_or(0);
    let os = strides(&out_full);
    let mut groups = vec![Vec::new(); n_out];
    let mut pos = vec![0usize; r];
    for i in 0..total {
        let o: usize = (0..r)
            .filter(|k| !axes.contains(k))
            .map(|k| pos[k] * os[k])
            .sum();
        groups[o].push(i);
        for k in (0..r).rev() {
            pos[k] += 1;
            if pos[k] < dims[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    Ok((out_dims, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(dims: &[usize], v: &[i64]) -> Const {
        Const::i64(dims.to_vec(), v.to_vec())
    }

    #[test]
    fn mod_follows_onnx_both_ways() {
        let a = i(&[4], &[7, -7, 7, -7]);
        let b = i(&[4], &[3, 3, -3, -3]);
        // fmod = 0: the divisor's sign (Python's %)
        assert_eq!(modulo(&a, &b, false).unwrap(), i(&[4], &[1, 2, -2, -1]));
        // fmod = 1: truncating division (C's fmod)
        assert_eq!(modulo(&a, &b, true).unwrap(), i(&[4], &[1, -1, 1, -1]));
        assert!(modulo(&a, &i(&[1], &[0]), false).is_err());
        let f = Const::f32(vec![2], vec![5.5, -5.5]);
        let g = Const::f32(vec![1], vec![2.0]);
        assert!(modulo(&f, &g, false).is_err(), "floats need fmod = 1");
        assert_eq!(
            modulo(&f, &g, true).unwrap(),
            Const::f32(vec![2], vec![1.5, -1.5])
        );
    }

    #[test]
    fn comparisons_and_where_broadcast() {
        let shape = i(&[4], &[1, 3, 224, 224]);
        let eq = compare("Equal", &shape, &i(&[], &[224])).unwrap();
        assert_eq!(eq, i(&[4], &[0, 0, 1, 1]));
        assert_eq!(not(&eq).unwrap(), i(&[4], &[1, 1, 0, 0]));
        assert_eq!(
            compare("Less", &shape, &i(&[1], &[4])).unwrap(),
            i(&[4], &[1, 1, 0, 0])
        );
        // PyTorch's dynamic-shape guard: where(shape == -1, 1, shape)
        let w = where_(
            &compare("Equal", &shape, &i(&[], &[-1])).unwrap(),
            &i(&[], &[1]),
            &shape,
        )
        .unwrap();
        assert_eq!(w, shape);
        let f = where_(
            &eq,
            &Const::f32(vec![], vec![0.5]),
            &Const::f32(vec![4], vec![1.0; 4]),
        )
        .unwrap();
        assert_eq!(f, Const::f32(vec![4], vec![1.0, 1.0, 0.5, 0.5]));
    }
}
