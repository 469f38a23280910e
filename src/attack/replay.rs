//! The replay list of a batch: the plan's own recordings and the shared
//! forward and backward ones, in submit order.

use crate::gpu::{Recording, Step, Tensor};

/// A piece of the batch's replay list: the plan's own recordings, or the
/// shared forward/backward ones, replayed as often as the attack needs them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Piece {
    Own(usize),
    GradForward,
    GradBackward,
    Forward,
}

/// Builds the replay list: own recordings in order, shared ones by name.
pub(super) struct Builder {
    pub own: Vec<Recording>,
    pub pieces: Vec<Piece>,
}

impl Builder {
    /// The own recording being appended to (a new one after a shared piece).
    pub fn rec(&mut self) -> &mut Recording {
        if !matches!(self.pieces.last(), Some(Piece::Own(_))) {
            self.own.push(Recording::new());
            self.pieces.push(Piece::Own(self.own.len() - 1));
        }
        self.own.last_mut().expect("just pushed")
    }
    pub fn shared(&mut self, p: Piece) {
        self.pieces.push(p);
    }
    pub fn push(&mut self, step: Step) {
        self.rec().push(step);
    }
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) {
        let bytes = src.numel() * 4;
        self.push(Step::Copy {
            src: src.buffer.clone(),
            src_offset: 0,
            dst: dst.buffer.clone(),
            dst_offset: 0,
            bytes,
        });
    }
    /// Copy `words` 4-byte values from word `src_word` of `src` to `dst`'s start.
    pub fn copy_words(&mut self, src: &Tensor, src_word: u64, dst: &Tensor, words: u64) {
        self.push(Step::Copy {
            src: src.buffer.clone(),
            src_offset: src_word * 4,
            dst: dst.buffer.clone(),
            dst_offset: 0,
            bytes: words * 4,
        });
    }
}
