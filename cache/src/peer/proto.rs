//! Frames of the peer protocol.

use crate::cache::{Op, Reply};
use keyward_dbc::{Key, Record};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

pub(crate) const MAX_FRAME: usize = 64 * 1024 * 1024;

pub(crate) fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    pub id: u64,
    pub table: String,
    pub pk: Key,
    pub op: Op,
}

/// An [`Op::GetMany`] written from the caller's keys without copying them: the same bytes as
/// the owned variant (checked by a test), which the peer decodes as an `Op`.
pub(crate) struct GetManyRef<'a>(pub &'a [&'a Key]);

impl Serialize for GetManyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `Op`'s variants in declaration order: Get, Write, Invalidate, GetMany.
        s.serialize_newtype_variant("Op", 3, "GetMany", self.0)
    }
}

/// A [`crate::cache::Write`] by reference, written as the owned one.
#[derive(Serialize)]
#[serde(rename = "Write")]
pub(crate) enum WriteRef<'a> {
    Put(&'a Record),
    Delete(&'a Key),
}

/// An [`Op::WriteMany`] written from the caller's writes without copying them (the caller
/// keeps them to route alone any key the peer does not hold).
pub(crate) struct WriteManyRef<'a>(pub &'a [WriteRef<'a>]);

impl Serialize for WriteManyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // `Op`'s variants in declaration order: Get, Write, Invalidate, GetMany, WriteMany.
        s.serialize_newtype_variant("Op", 4, "WriteMany", self.0)
    }
}

/// Why a peer could not serve a request, kept apart from a successful [`Reply`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RemoteError {
    pub message: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Response {
    pub id: u64,
    pub result: Result<Reply, RemoteError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{Served, WriteOp};
    use keyward_dbc::Value;
    use std::sync::Arc;

    fn every_value() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Bool(true),
            Value::I64(i64::MIN),
            Value::F64(-0.5),
            Value::F64(f64::INFINITY),
            Value::Decimal("-12345.678901234567890".parse().unwrap()),
            Value::Text("混合 text, \"quoted\"\n".into()),
            Value::Bytes(vec![0, 255, 7]),
            Value::Timestamp("2026-12-07T08:00:00.123456Z".parse().unwrap()),
            Value::Uuid(uuid::Uuid::from_u128(
                0x1234_5678_9abc_def0_1234_5678_9abc_def0,
            )),
            Value::Json(Box::new(
                serde_json::json!({"a": [1, 2.5, null, "x"], "b": {"c": true}}),
            )),
        ]
    }

    #[test]
    fn frames_round_trip_every_value_kind() {
        let rec = every_value();
        let req = Request {
            id: 7,
            table: "t".into(),
            pk: vec![Value::I64(3)],
            op: Op::Write(WriteOp::Update {
                name: "incr".into(),
                arg: serde_json::json!({"by": 2, "tags": ["a"]}),
            }),
        };
        let back: Request = postcard::from_bytes(&postcard::to_stdvec(&req).unwrap()).unwrap();
        assert_eq!(back.id, 7);
        assert_eq!(back.pk, req.pk);
        match back.op {
            Op::Write(WriteOp::Update { name, arg }) => {
                assert_eq!(name, "incr");
                assert_eq!(arg, serde_json::json!({"by": 2, "tags": ["a"]}));
            }
            other => panic!("{other:?}"),
        }
        let resp = Response {
            id: 9,
            result: Ok(Reply::Values(vec![
                Served::Value(Some(Arc::new(rec.clone()))),
                Served::Value(None),
                Served::NotHeld,
            ])),
        };
        let back: Response = postcard::from_bytes(&postcard::to_stdvec(&resp).unwrap()).unwrap();
        match back.result {
            Ok(Reply::Values(v)) => {
                assert!(matches!(&v[0], Served::Value(Some(r)) if **r == rec));
                assert!(matches!(v[1], Served::Value(None)));
                assert!(matches!(v[2], Served::NotHeld));
            }
            other => panic!("{other:?}"),
        }
        // A NaN, which JSON frames could not carry, crosses as itself.
        let nan = Response {
            id: 1,
            result: Ok(Reply::Value(Some(Arc::new(vec![Value::F64(f64::NAN)])))),
        };
        let back: Response = postcard::from_bytes(&postcard::to_stdvec(&nan).unwrap()).unwrap();
        assert!(
            matches!(back.result, Ok(Reply::Value(Some(r))) if matches!(r[0], Value::F64(x) if x.is_nan()))
        );
        // The journal and other JSON stay as they were: a JSON value appears as itself.
        let j = serde_json::to_string(&Value::Json(Box::new(serde_json::json!({"k": 1})))).unwrap();
        assert_eq!(j, r#"{"Json":{"k":1}}"#);
    }

    #[test]
    fn a_borrowed_get_many_is_written_as_the_owned_one() {
        let keys: Vec<Key> = vec![
            vec![Value::I64(1)],
            vec![Value::Text("é".into()), Value::Null],
        ];
        let refs: Vec<&Key> = keys.iter().collect();
        let owned = postcard::to_stdvec(&Op::GetMany(keys.clone())).unwrap();
        let borrowed = postcard::to_stdvec(&GetManyRef(&refs)).unwrap();
        assert_eq!(owned, borrowed);
        match postcard::from_bytes::<Op>(&borrowed).unwrap() {
            Op::GetMany(back) => assert_eq!(back, keys),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_borrowed_write_many_is_written_as_the_owned_one() {
        use crate::cache::Write;
        let rec = every_value();
        let pk: Key = vec![Value::Text("ключ".into())];
        let owned = postcard::to_stdvec(&Op::WriteMany(vec![
            Write::Put(Arc::new(rec.clone())),
            Write::Delete(pk.clone()),
        ]))
        .unwrap();
        let refs = [WriteRef::Put(&rec), WriteRef::Delete(&pk)];
        let borrowed = postcard::to_stdvec(&WriteManyRef(&refs)).unwrap();
        assert_eq!(owned, borrowed);
        match postcard::from_bytes::<Op>(&borrowed).unwrap() {
            Op::WriteMany(back) => {
                assert!(matches!(&back[0], Write::Put(r) if **r == rec));
                assert!(matches!(&back[1], Write::Delete(k) if *k == pk));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_truncated_or_garbled_frame_is_an_error_not_a_panic() {
        let resp = Response {
            id: 3,
            result: Ok(Reply::Value(Some(Arc::new(every_value())))),
        };
        let bytes = postcard::to_stdvec(&resp).unwrap();
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<Response>(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = postcard::from_bytes::<Response>(&b);
        }
    }
}
