//! Connect's enveloped messages, used by streaming calls: a flags byte
//! (`0x01` compressed, `0x02` end of stream), a 4-byte big-endian length
//! and the payload.

use bytes::{BufMut, Bytes, BytesMut};

pub const FLAG_COMPRESSED: u8 = 0x01;
pub const FLAG_END_STREAM: u8 = 0x02;

/// One envelope around `payload`.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).expect("a message under 4 GiB"));
    out.put_slice(payload);
    out.freeze()
}

/// The only envelope of a request body: its flags and payload.
pub fn single(body: &Bytes) -> Result<(u8, Bytes), &'static str> {
    if body.len() < 5 {
        return Err("the request body is not an enveloped message");
    }
    let flags = body[0];
    let len = u32::from_be_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
    match body.len() - 5 {
        n if n < len => Err("the request envelope is truncated"),
        n if n > len => Err("a server-streaming call takes exactly one request message"),
        _ => Ok((flags, body.slice(5..))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_bodies() {
        let one = encode(0, b"abc");
        assert_eq!(&one[..], b"\0\0\0\0\x03abc");
        assert_eq!(single(&one).unwrap(), (0, Bytes::from_static(b"abc")));
        assert!(single(&Bytes::from_static(b"\0\0\0")).is_err());
        assert!(single(&Bytes::from_static(b"\0\0\0\0\x04abc")).is_err());
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        assert!(single(&two.freeze()).is_err());
        assert_eq!(single(&encode(0, b"")).unwrap().1.len(), 0);
    }
}
