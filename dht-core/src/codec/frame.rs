//! One zstd frame: compressing a value, and decoding untrusted frames within a limit.
//!
//! Decoding never produces more than `max_len` bytes and never allocates an output
//! larger than that: a frame whose header declares more is refused before decoding
//! ([`CodecError::DeclaredTooLarge`]); a frame without a declared size is decoded in
//! bounded chunks and stopped one byte past the limit ([`CodecError::TooLarge`]); a
//! frame that produces more than it declared is stopped at the declared size. zstd's own
//! window (the history it keeps while streaming a frame without a declared size) is
//! capped by the limit too: at most the power of two covering base plus limit.

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

use crate::error::CodecError;

/// The compression level: zstd's default, fast (a 127 KB list compresses in about a
/// millisecond) and within a few percent of the higher levels on JSON lists.
pub const LEVEL: i32 = 3;

/// The magic number that opens a standard zstd frame, as it appears on the wire.
const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// Output chunk of the streaming path (frames without a declared size).
const CHUNK: usize = 64 * 1024;

/// The smallest window zstd accepts is 2^10; the largest we ever ask for or accept is
/// 2^30 (1 GiB, far above any value limit).
const MIN_WINDOW_LOG: u32 = 10;
const MAX_WINDOW_LOG: u32 = 30;

/// The window log that covers `len` bytes: ceil(log2(len)), within zstd's bounds.
pub(crate) fn window_log(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

/// Compresses `src` into one zstd frame with its content size and a checksum, using
/// `prefix` (possibly empty) as raw-content dictionary. The window covers prefix and
/// source, so every part of the prefix can be referenced.
///
/// # Panics
///
/// Only if zstd cannot allocate its context (out of memory), like any allocation;
/// never on any input.
pub(crate) fn compress_with_prefix(prefix: &[u8], src: &[u8]) -> Vec<u8> {
    let mut cctx = CCtx::create();
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(src.len()));
    let result = (|| {
        cctx.set_parameter(CParameter::CompressionLevel(LEVEL))?;
        cctx.set_parameter(CParameter::ContentSizeFlag(true))?;
        cctx.set_parameter(CParameter::ChecksumFlag(true))?;
        if !prefix.is_empty() {
            let window = window_log(prefix.len().saturating_add(src.len()));
            cctx.set_parameter(CParameter::WindowLog(window))?;
            cctx.ref_prefix(prefix)?;
        }
        cctx.compress2(&mut out, src)
    })();
    if let Err(code) = result {
        // The output has compress_bound room and every parameter is in range: zstd only
        // fails here when it cannot allocate.
        panic!(
            "zstd compression failed: {}",
            zstd_safe::get_error_name(code)
        );
    }
    out
}

/// Compresses a value into one zstd frame at [`LEVEL`], with its content size (so a
/// reader can refuse a bomb from the header) and a checksum.
///
/// # Panics
///
/// Only if zstd cannot allocate its context (out of memory), like any allocation;
/// never on any input.
pub fn compress(value: &[u8]) -> Vec<u8> {
    compress_with_prefix(&[], value)
}

/// Decompresses one zstd frame of untrusted bytes into at most `max_len` bytes.
///
/// The frame must be exactly one standard zstd frame (no skippable or legacy frames, no
/// trailing bytes). A header declaring more than `max_len` is refused before decoding;
/// a frame without a declared size is stopped as soon as it passes `max_len`. Never
/// panics and never allocates an output larger than `max_len`.
pub fn decompress(bytes: &[u8], max_len: usize) -> Result<Vec<u8>, CodecError> {
    decode_frame(bytes, &[], max_len)
}

fn corrupt(code: zstd_safe::ErrorCode) -> CodecError {
    CodecError::Corrupt(zstd_safe::get_error_name(code))
}

/// zstd's error code (a negated `ZSTD_ErrorCode`) for a frame whose window is over
/// `windowLogMax`.
const WINDOW_TOO_LARGE: zstd_safe::ErrorCode = 0usize.wrapping_sub(
    zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge as usize,
);

/// Decodes one frame made with `prefix` as raw-content dictionary (empty: none).
pub(crate) fn decode_frame(
    frame: &[u8],
    prefix: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, CodecError> {
    if frame.get(..4) != Some(&MAGIC[..]) {
        return Err(CodecError::NotZstd("no zstd frame magic"));
    }
    let declared = zstd_safe::get_frame_content_size(frame)
        .map_err(|_| CodecError::Corrupt("truncated or invalid frame header"))?;
    if let Some(declared) = declared {
        if declared > max_len as u64 {
            return Err(CodecError::DeclaredTooLarge {
                declared,
                limit: max_len,
            });
        }
    }
    let frame_len = zstd_safe::find_frame_compressed_size(frame).map_err(corrupt)?;
    if frame_len != frame.len() {
        return Err(CodecError::NotZstd("bytes after the zstd frame"));
    }
    let mut dctx = DCtx::create();
    let window = window_log(prefix.len().saturating_add(max_len));
    dctx.set_parameter(DParameter::WindowLogMax(window))
        .map_err(corrupt)?;
    if !prefix.is_empty() {
        dctx.ref_prefix(prefix).map_err(corrupt)?;
    }
    match declared {
        // Checked above: the declared size is at most max_len, so it fits a usize.
        Some(declared) => one_shot(&mut dctx, frame, declared as usize),
        None => streamed(&mut dctx, frame, max_len),
    }
}

/// A frame with a declared size: decoded in one call into exactly that much room. zstd
/// refuses a frame whose content differs from its declared size.
fn one_shot(dctx: &mut DCtx<'_>, frame: &[u8], declared: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(declared);
    dctx.decompress(&mut out, frame).map_err(corrupt)?;
    if out.len() != declared {
        return Err(CodecError::Corrupt(
            "content differs from its declared size",
        ));
    }
    Ok(out)
}

/// A frame without a declared size: decoded in chunks of at most [`CHUNK`], each no
/// larger than the room left under `max_len` plus one byte, so a bomb is caught by the
/// first byte past the limit.
fn streamed(dctx: &mut DCtx<'_>, frame: &[u8], max_len: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; CHUNK.min(max_len.saturating_add(1))];
    let mut input = InBuffer::around(frame);
    loop {
        let room = (max_len - out.len()).saturating_add(1).min(chunk.len());
        let mut output = OutBuffer::around(&mut chunk[..room]);
        let in_before = input.pos();
        let remaining =
            dctx.decompress_stream(&mut output, &mut input)
                .map_err(|code| match code {
                    WINDOW_TOO_LARGE => CodecError::WindowTooLarge { limit: max_len },
                    code => corrupt(code),
                })?;
        let produced = output.pos();
        if produced > max_len - out.len() {
            return Err(CodecError::TooLarge { limit: max_len });
        }
        out.extend_from_slice(&chunk[..produced]);
        if remaining == 0 {
            return Ok(out);
        }
        if produced == 0 && input.pos() == in_before {
            // No progress with input left to give: the frame ends early.
            return Err(CodecError::Corrupt("truncated frame"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_log_covers_the_length() {
        assert_eq!(window_log(0), MIN_WINDOW_LOG);
        assert_eq!(window_log(1024), 10);
        assert_eq!(window_log(1025), 11);
        assert_eq!(window_log(1 << 20), 20);
        assert_eq!(window_log((1 << 20) + 1), 21);
        assert_eq!(window_log(usize::MAX), MAX_WINDOW_LOG);
    }

    #[test]
    fn round_trip_small_and_empty() {
        for value in [&b""[..], b"x", b"[]", &[7u8; 5000]] {
            let frame = compress(value);
            assert_eq!(decompress(&frame, value.len()).unwrap(), value);
        }
    }

    #[test]
    fn garbage_and_other_frames_are_refused() {
        assert!(matches!(decompress(b"", 10), Err(CodecError::NotZstd(_))));
        assert!(matches!(
            decompress(b"\x50\x2a\x4d\x18\0\0\0\0", 10),
            Err(CodecError::NotZstd(_))
        ));
        let mut two = compress(b"a");
        two.extend(compress(b"b"));
        assert!(matches!(decompress(&two, 10), Err(CodecError::NotZstd(_))));
    }
}
