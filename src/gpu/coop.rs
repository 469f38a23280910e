//! Cooperative matrices (tensor cores) for `--precision mixed`: whether an
//! adapter can run `shaders/conv/coop.wgsl`, decided from what it reports
//! (features, the matrix configurations it lists, subgroup sizes, workgroup
//! memory), so the decision is testable on made-up adapters.

use wgpu::{CooperativeMatrixProperties, CooperativeScalarType, Features};

/// Workgroup memory `coop.wgsl` declares: A and B slices of 64 x 32 f16 and
/// the 64 x 64 f32 tile of the epilogue.
pub const COOP_WORKGROUP_BYTES: u32 = 2 * 2048 * 2 + 4096 * 4;

/// Subgroup width `coop.wgsl`'s tiling assumes (4 subgroups of 128 threads).
pub const COOP_SUBGROUP: u32 = 32;

/// What the adapter reports that bears on the cooperative GEMM.
#[derive(Debug, Clone)]
pub struct CoopReport {
    pub features: Features,
    pub properties: Vec<CooperativeMatrixProperties>,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    pub workgroup_storage: u32,
}

impl CoopReport {
    pub fn of(adapter: &wgpu::Adapter, limits: &wgpu::Limits) -> Self {
        let features = adapter.features();
        let info = adapter.get_info();
        CoopReport {
            properties: if features.contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter.cooperative_matrix_properties()
            } else {
                Vec::new()
            },
            features,
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            workgroup_storage: limits.max_compute_workgroup_storage_size,
        }
    }

    /// `Ok(features to request)` when `coop.wgsl` can run here, else why not
    /// (a sentence for the user).
    pub fn check(&self) -> Result<Features, String> {
        let needed =
            Features::EXPERIMENTAL_COOPERATIVE_MATRIX | Features::SUBGROUP | Features::SHADER_F16;
        if !self
            .features
            .contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            return Err("the adapter offers no cooperative matrices (tensor cores)".into());
        }
        let missing = needed - self.features;
        if !missing.is_empty() {
            return Err(format!("the adapter lacks {missing:?}"));
        }
        let listed = self.properties.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == CooperativeScalarType::F16
                && p.cr_type == CooperativeScalarType::F32
        });
        if !listed {
            return Err(
                "the adapter lists no 16x16x16 cooperative matrix with f16 operands and \
                 f32 accumulation"
                    .into(),
            );
        }
        if (self.subgroup_min, self.subgroup_max) != (COOP_SUBGROUP, COOP_SUBGROUP) {
            return Err(format!(
                "its subgroups are {}..{} wide; the tensor-core kernel needs exactly {COOP_SUBGROUP}",
                self.subgroup_min, self.subgroup_max
            ));
        }
        if self.workgroup_storage < COOP_WORKGROUP_BYTES {
            return Err(format!(
                "it allows {} bytes of workgroup memory; the tensor-core kernel needs \
                 {COOP_WORKGROUP_BYTES}",
                self.workgroup_storage
            ));
        }
        Ok(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(
        m: u32,
        ab: CooperativeScalarType,
        cr: CooperativeScalarType,
    ) -> CooperativeMatrixProperties {
        CooperativeMatrixProperties {
            m_size: m,
            n_size: m,
            k_size: m,
            ab_type: ab,
            cr_type: cr,
            saturating_accumulation: false,
        }
    }

    /// An NVIDIA-like adapter: 16x16x16 f16 -> f32 listed, subgroups of 32, 48 KiB.
    fn tensor_core_gpu() -> CoopReport {
        use CooperativeScalarType::*;
        CoopReport {
            features: Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                | Features::SUBGROUP
                | Features::SHADER_F16
                | Features::TIMESTAMP_QUERY,
            properties: vec![prop(16, F16, F16), prop(16, F16, F32), prop(8, F32, F32)],
            subgroup_min: 32,
            subgroup_max: 32,
            workgroup_storage: 48 * 1024,
        }
    }

    #[test]
    fn a_tensor_core_gpu_runs_the_cooperative_kernel() {
        let f = tensor_core_gpu().check().unwrap();
        assert!(f.contains(Features::EXPERIMENTAL_COOPERATIVE_MATRIX | Features::SUBGROUP));
        assert!(
            !f.contains(Features::TIMESTAMP_QUERY),
            "only what the kernel needs"
        );
    }

    #[test]
    fn anything_missing_says_what() {
        use CooperativeScalarType::*;
        let cases: Vec<(CoopReport, &str)> = vec![
            (
                CoopReport {
                    features: Features::SUBGROUP | Features::SHADER_F16,
                    ..tensor_core_gpu()
                },
                "no cooperative matrices",
            ),
            (
                CoopReport {
                    features: Features::EXPERIMENTAL_COOPERATIVE_MATRIX | Features::SHADER_F16,
                    ..tensor_core_gpu()
                },
                "SUBGROUP",
            ),
            (
                CoopReport {
                    // Metal-like: 8x8 only
                    properties: vec![prop(8, F32, F32), prop(8, F16, F16)],
                    ..tensor_core_gpu()
                },
                "16x16x16",
            ),
            (
                CoopReport {
                    // f16 accumulation only
                    properties: vec![prop(16, F16, F16)],
                    ..tensor_core_gpu()
                },
                "f32 accumulation",
            ),
            (
                CoopReport {
                    subgroup_min: 32,
                    subgroup_max: 64,
                    ..tensor_core_gpu()
                },
                "32..64",
            ),
            (
                CoopReport {
                    workgroup_storage: 16 * 1024,
                    ..tensor_core_gpu()
                },
                "16384 bytes",
            ),
        ];
        for (report, why) in cases {
            let err = report.check().unwrap_err();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
    }
}
