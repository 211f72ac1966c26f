//! A safe wrapper around the `gemm` crate's f32 matrix product, the one primitive the fused
//! convolution kernels in [`super::conv`] are built from.

use std::mem::MaybeUninit;

/// A read-only matrix view: `a[i, j] = data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, without copying.
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c = a @ b` (or `c += a @ b` when `accumulate`), with `c` row-major (a.rows, b.cols).
/// Products above about 64^3 multiply-adds run on all rayon threads.
pub fn sgemm(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool) {
    sgemm_with(a, b, c, accumulate, true);
}

/// [`sgemm`] on the calling thread only (for kernels that split the work across threads
/// themselves).
pub fn sgemm_serial(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool) {
    sgemm_with(a, b, c, accumulate, false);
}

/// [`sgemm`] when `parallel`, else [`sgemm_serial`]: for kernels that split their work across
/// threads themselves unless there is too little of it to split.
pub fn sgemm_with(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool, parallel: bool) {
    gemm_raw(a, b, c, b.cols, accumulate, parallel && big(a, b));
}

/// Whether `a @ b` has enough multiply-adds (about 64^3) to pay for splitting across threads.
fn big(a: MatRef, b: MatRef) -> bool {
    a.rows * a.cols * b.cols >= 64 * 64 * 64
}

/// `c = a @ b` into memory not yet written: every element of `c`, row-major (a.rows, b.cols),
/// is written (none read), on all threads for products of more than about 64^3 multiply-adds.
/// Saves the pass that zeroing an output of megabytes first would cost.
pub fn sgemm_uninit(a: MatRef, b: MatRef, c: &mut [MaybeUninit<f32>]) {
    sgemm_uninit_with(a, b, c, true);
}

/// [`sgemm_uninit`], on the calling thread alone unless `parallel` (for products that are
/// already one task of a parallel loop).
pub fn sgemm_uninit_with(a: MatRef, b: MatRef, c: &mut [MaybeUninit<f32>], parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    check(a, b, c.len(), n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.iter_mut().take(m * n).for_each(|v| _ = v.write(0.0));
        return;
    }
    // SAFETY: `check` keeps every index inside the slices; with k > 0 and `accumulate` off,
    // gemm writes each (i, j) of `c` once without reading it, and MaybeUninit<f32> has f32's
    // layout.
    unsafe { call_gemm(a, b, c.as_mut_ptr().cast(), n, false, parallel && big(a, b)) }
}

/// [`sgemm_serial`] into a strided output: `c[i * rs + j] (+)= (a @ b)[i, j]`, for writing
/// straight into a window of a wider buffer (a block of columns of a padded image).
pub fn sgemm_serial_into(a: MatRef, b: MatRef, c: &mut [f32], rs: usize, accumulate: bool) {
    gemm_raw(a, b, c, rs, accumulate, false);
}

/// Panics unless `a @ b` is defined and fits a row-major output of `len` floats at row
/// stride `rs`.
fn check(a: MatRef, b: MatRef, len: usize, rs: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "sgemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "sgemm: view out of bounds");
    // Rows at least `n` apart never overlap, and the last one ends inside `c`: every (i, j)
    // is its own element of `c`.
    assert!(
        rs >= n,
        "sgemm: output rows of {n} overlap at row stride {rs}"
    );
    assert!(
        m == 0 || n == 0 || (m - 1) * rs + n <= len,
        "sgemm: output view out of bounds"
    );
}

/// The call into `gemm`, with `c` row-major at row stride `rs`.
fn gemm_raw(a: MatRef, b: MatRef, c: &mut [f32], rs: usize, accumulate: bool, threaded: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    check(a, b, c.len(), rs);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(rs).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    // SAFETY: `check` keeps every index the views describe inside their slices and gives each
    // (i, j) its own element of `c`, which is borrowed mutably, so it aliases neither input.
    unsafe { call_gemm(a, b, c.as_mut_ptr(), rs, accumulate, threaded) }
}

/// `gemm::gemm` for f32 views.
///
/// # Safety
/// The views and `c` (row-major at row stride `rs`) must be in bounds as [`check`] checks, `c`
/// must alias neither input, and k, m, n must be positive.
unsafe fn call_gemm(
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    rs: usize,
    accumulate: bool,
    threaded: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let parallelism = if threaded {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
