//! Whether an RTP packet starts a keyframe, read from its payload header (the relay switches a
//! receiver from one simulcast layer to another only there: a decoder cannot start mid-GOP).

/// The codecs the relay forwards, by what their payload headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
    /// Audio and anything else: every packet stands alone.
    Other,
}

impl VideoCodec {
    /// From an SDP mime type (`video/VP8`), case-insensitively.
    pub fn of(mime: &str) -> VideoCodec {
        let name = mime.rsplit('/').next().unwrap_or(mime);
        match name.to_ascii_lowercase().as_str() {
            "vp8" => VideoCodec::Vp8,
            "vp9" => VideoCodec::Vp9,
            "h264" => VideoCodec::H264,
            "av1" => VideoCodec::Av1,
            _ => VideoCodec::Other,
        }
    }

    /// Whether `payload` is the first packet of a keyframe.
    pub fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8(payload),
            VideoCodec::Vp9 => vp9(payload),
            VideoCodec::H264 => h264(payload),
            VideoCodec::Av1 => av1(payload),
            VideoCodec::Other => true,
        }
    }
}

/// RFC 7741 §4.2-4.3: the payload descriptor (start of partition 0), then the VP8 frame tag,
/// whose lowest bit is 0 for a key frame.
fn vp8(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start_of_partition || partition != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(1) else { return false };
        i = 2;
        if x & 0x80 != 0 {
            // Picture id: 15 bits when its first bit is set, else 7.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    p.get(i).is_some_and(|tag| tag & 0x01 == 0)
}

/// RFC 9628 §4.2: the first packet of a frame (B) that is not inter-picture predicted (P).
fn vp9(p: &[u8]) -> bool {
    p.first()
        .is_some_and(|&b0| b0 & 0x40 == 0 && b0 & 0x08 != 0)
}

/// RFC 6184: an IDR slice or a sequence parameter set, alone, aggregated (STAP-A) or as the
/// first fragment (FU-A).
fn h264(p: &[u8]) -> bool {
    let is_key = |nal_type: u8| matches!(nal_type, 5 | 7);
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1F {
        24 => {
            let mut i = 1;
            while let (Some(&hi), Some(&lo)) = (p.get(i), p.get(i + 1)) {
                let size = usize::from(u16::from_be_bytes([hi, lo]));
                if p.get(i + 2).is_some_and(|n| is_key(n & 0x1F)) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu & 0x1F)),
        t => is_key(t),
    }
}

/// AV1 RTP §4.4: the aggregation header's N bit starts a new coded video sequence.
fn av1(p: &[u8]) -> bool {
    p.first().is_some_and(|&b0| b0 & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_told_from_delta_frames() {
        let vp8 = VideoCodec::of("video/VP8");
        assert!(vp8.starts_keyframe(&[0x10, 0x00, 0x9d]));
        assert!(!vp8.starts_keyframe(&[0x10, 0x01, 0x9d]));
        // Not the start of partition 0.
        assert!(!vp8.starts_keyframe(&[0x00, 0x00]));
        assert!(!vp8.starts_keyframe(&[0x11, 0x00]));
        // Extended: a 15-bit picture id, TL0PICIDX and TID, then the frame tag.
        assert!(vp8.starts_keyframe(&[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x00]));
        assert!(!vp8.starts_keyframe(&[0x90, 0xE0, 0x81, 0x23, 0x05, 0x40, 0x01]));
        // Truncated packets are not keyframes (and do not panic).
        assert!(!vp8.starts_keyframe(&[0x90, 0xE0, 0x81]));
        assert!(!vp8.starts_keyframe(&[]));
    }

    #[test]
    fn h264_idr_and_sps_start_keyframes_alone_aggregated_or_fragmented() {
        let h264 = VideoCodec::of("video/h264");
        assert!(h264.starts_keyframe(&[0x65, 0x88]));
        assert!(h264.starts_keyframe(&[0x67, 0x42]));
        assert!(!h264.starts_keyframe(&[0x41, 0x9a]));
        // STAP-A holding an SPS.
        assert!(h264.starts_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]));
        assert!(!h264.starts_keyframe(&[0x78, 0x00, 0x01, 0x41, 0x00, 0x09]));
        // FU-A: the first fragment of an IDR, not a later one.
        assert!(h264.starts_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!h264.starts_keyframe(&[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn vp9_av1_and_audio() {
        assert!(VideoCodec::Vp9.starts_keyframe(&[0x08]));
        assert!(!VideoCodec::Vp9.starts_keyframe(&[0x48]));
        assert!(!VideoCodec::Vp9.starts_keyframe(&[0x00]));
        assert!(VideoCodec::Av1.starts_keyframe(&[0x18]));
        assert!(!VideoCodec::Av1.starts_keyframe(&[0x10]));
        assert_eq!(VideoCodec::of("audio/opus"), VideoCodec::Other);
        assert!(VideoCodec::Other.starts_keyframe(b"anything"));
    }
}
