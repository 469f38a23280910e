//! Broadcast element-wise add and mul on NCHW tensors (residual connections,
//! squeeze-excite scaling), forward and the gradients of both operands.
//!
//! Each dimension of the two operands must be equal or 1 in one of them; the
//! output has the broadcast shape. The gradient of a broadcast operand is the
//! sum of the output gradient over the dimensions it was broadcast along (for
//! squeeze-excite `x[n,c,h,w] * s[n,c,1,1]`: `gs[n,c] = sum_hw gy * x`), one
//! workgroup per element of that operand.

use crate::error::{Error, Result};
use crate::gpu::{Binding, Context, Recording, Shader, Shape, Tensor};
use crate::ops::elementwise::{count_u32, distinct, groups_1d};

/// The element-wise operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryOp {
    Add,
    Mul,
}

impl BinaryOp {
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Mul => "mul",
        }
    }
    fn code(&self) -> f64 {
        match self {
            BinaryOp::Add => 0.0,
            BinaryOp::Mul => 1.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Fwd {
    od: [u32; 4],
    sa: [u32; 4],
    sb: [u32; 4],
    count: u32,
    _p: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Bwd {
    od: [u32; 4],
    td: [u32; 4],
    rd: [u32; 4],
    so: [u32; 4],
    count: u32,
    red: u32,
    _p: [u32; 2],
}

/// The broadcast shape of `a` and `b`: per dimension equal, or 1 in one of them.
pub fn broadcast_shape(a: Shape, b: Shape) -> Result<Shape> {
    let (da, db) = (a.dims(), b.dims());
    let mut out = [0u32; 4];
    for d in 0..4 {
        out[d] = if da[d] == db[d] || db[d] == 1 {
            da[d]
        } else if da[d] == 1 {
            db[d]
        } else {
            return Err(Error::shape(
                "broadcast",
                format!(
                    "shapes {a} and {b} do not broadcast (dimension {d}: {} vs {})",
                    da[d], db[d]
                ),
            ));
        };
    }
    Ok(Shape::new(out[0], out[1], out[2], out[3]))
}

/// Strides of `s` along the dims of `out` (0 where `s` is broadcast).
fn strides(s: Shape, out: Shape) -> [u32; 4] {
    let d = s.dims();
    let o = out.dims();
    let full = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
    let mut st = [0u32; 4];
    for i in 0..4 {
        st[i] = if d[i] == 1 && o[i] != 1 { 0 } else { full[i] };
    }
    st
}

/// `y = a (+|*) b` with broadcasting; `y` must have the broadcast shape.
pub fn forward(
    ctx: &Context,
    rec: &mut Recording,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let name = op.name();
    let out = broadcast_shape(a.shape, b.shape).map_err(|_| {
        Error::shape(
            name,
            format!(
                "operand shapes {} and {} do not broadcast",
                a.shape, b.shape
            ),
        )
    })?;
    if y.shape != out {
        return Err(Error::shape(
            name,
            format!(
                "operands {} and {} broadcast to {out}, but the output tensor is {}",
                a.shape, b.shape, y.shape
            ),
        ));
    }
    distinct(name, y, &[a, b])?;
    let count = count_u32(name, out.numel())?;
    if count == 0 {
        return Ok(());
    }
    let k = ctx.kernel(
        Shader::Binary,
        y.dtype,
        "forward",
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[("OP", op.code())],
    )?;
    let p = ctx.uniform(&Fwd {
        od: out.dims(),
        sa: strides(a.shape, out),
        sb: strides(b.shape, out),
        count,
        _p: [0; 3],
    });
    rec.push(ctx.dispatch(name, &k, &p, &[a, b, y], groups_1d(count))?);
    Ok(())
}

/// Gradients of `y = a (+|*) b` given `gy`: `ga` and `gb` (either may be
/// skipped) have the shapes of `a` and `b` and are overwritten. For `Add` the
/// operand values are not read but must still be passed.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    ctx: &Context,
    rec: &mut Recording,
    op: BinaryOp,
    a: &Tensor,
    b: &Tensor,
    gy: &Tensor,
    ga: Option<&Tensor>,
    gb: Option<&Tensor>,
) -> Result<()> {
    let name = op.name();
    let out = broadcast_shape(a.shape, b.shape).map_err(|_| {
        Error::shape(
            name,
            format!(
                "operand shapes {} and {} do not broadcast",
                a.shape, b.shape
            ),
        )
    })?;
    if gy.shape != out {
        return Err(Error::shape(
            format!("{name} backward"),
            format!(
                "operands {} and {} broadcast to {out}, but gy is {}",
                a.shape, b.shape, gy.shape
            ),
        ));
    }
    if let Some(ga) = ga {
        grad(ctx, rec, op, "a", a, b, gy, ga, out)?;
    }
    if let Some(gb) = gb {
        grad(ctx, rec, op, "b", b, a, gy, gb, out)?;
    }
    Ok(())
}

/// Gradient `g` of operand `t` whose partner is `other`.
#[allow(clippy::too_many_arguments)]
fn grad(
    ctx: &Context,
    rec: &mut Recording,
    op: BinaryOp,
    which: &str,
    t: &Tensor,
    other: &Tensor,
    gy: &Tensor,
    g: &Tensor,
    out: Shape,
) -> Result<()> {
    let label = format!("{}_backward_{which}", op.name());
    if g.shape != t.shape {
        return Err(Error::shape(
            &label,
            format!(
                "gradient tensor is {} but operand {which} is {}",
                g.shape, t.shape
            ),
        ));
    }
    distinct(&label, g, &[gy, other])?;
    let count = count_u32(&label, t.numel())?;
    count_u32(&label, out.numel())?;
    if count == 0 {
        return Ok(());
    }
    let (od, td) = (out.dims(), t.shape.dims());
    let mut rd = [1u32; 4];
    for d in 0..4 {
        if td[d] == 1 {
            rd[d] = od[d];
        }
    }
    let red = rd.iter().product::<u32>();
    let p = ctx.uniform(&Bwd {
        od,
        td,
        rd,
        so: strides(other.shape, out),
        count,
        red,
        _p: [0; 2],
    });
    let (entry, groups) = if red == 1 {
        ("grad_map", groups_1d(count))
    } else {
        ("grad_reduce", count)
    };
    let k = ctx.kernel(
        Shader::Binary,
        g.dtype,
        entry,
        &[Binding::Read, Binding::Read, Binding::ReadWrite],
        &[("OP", op.code())],
    )?;
    rec.push(ctx.dispatch(label, &k, &p, &[gy, other, g], groups)?);
    Ok(())
}

/// This file's uniform structs and their WGSL twins (checked by
/// tests/backends.rs).
pub(crate) fn uniform_layouts() -> Vec<crate::gpu::UniformLayout> {
    vec![
        crate::gpu::uniform_layout!("binary", "Fwd", Fwd, [od, sa, sb, count]),
        crate::gpu::uniform_layout!("binary", "Bwd", Bwd, [od, td, rd, so, count, red]),
    ]
}
