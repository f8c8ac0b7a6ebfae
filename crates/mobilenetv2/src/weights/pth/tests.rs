//! Unit tests of the pickle machine, the torch semantics and both containers.

use std::rc::Rc;

use super::pickle::*;
use super::torch::*;
use super::*;
use crate::weights::Data;

/// A pickle written opcode by opcode.
struct P(Vec<u8>);

impl P {
    /// Protocol 2, like torch.
    fn new() -> P {
        P(vec![0x80, 2])
    }
    fn op(mut self, b: &[u8]) -> P {
        self.0.extend_from_slice(b);
        self
    }
    fn s(self, s: &str) -> P {
        let n = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&n).op(s.as_bytes())
    }
    fn int(self, i: i32) -> P {
        self.op(b"J").op(&i.to_le_bytes())
    }
    fn global(self, module: &str, name: &str) -> P {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }
    fn ints(self, v: &[usize]) -> P {
        v.iter().fold(self.op(b"("), |p, &d| p.int(d as i32)).op(b"t")
    }
    fn ordered_dict(self) -> P {
        self.global("collections", "OrderedDict").op(b")R")
    }
    /// `_rebuild_tensor_v2` of a FloatStorage `key` of `numel` elements, with optional
    /// legacy view metadata `(view_key, offset, size)`.
    fn tensor(
        self,
        key: &str,
        numel: usize,
        view: Option<(usize, usize)>,
        offset: usize,
        size: &[usize],
        stride: &[usize],
    ) -> P {
        let p = self
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .s("storage")
            .global("torch", "FloatStorage")
            .s(key)
            .s("cpu")
            .int(numel as i32);
        let p = match view {
            None => p.op(b"N"),
            Some((o, n)) => p.op(b"(").s("view").int(o as i32).int(n as i32).op(b"t"),
        };
        p.op(b"tQ").int(offset as i32).ints(size).ints(stride).op(&[0x89]).ordered_dict().op(b"tR")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A legacy file: magic, protocol, sys_info, `object`, the keys, and f32 storages.
fn legacy(object: Vec<u8>, storages: &[(&str, &[f32])]) -> Vec<u8> {
    let mut f = vec![0x80, 2, 0x8a, 10];
    f.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
    f.push(b'.');
    f.extend(P::new().op(b"M").op(&1001u16.to_le_bytes()).stop());
    f.extend(P::new().op(b"}").s("little_endian").op(&[0x88]).op(b"s").stop());
    f.extend(object);
    let keys = storages.iter().fold(P::new().op(b"]("), |p, (k, _)| p.s(k)).op(b"e").stop();
    f.extend(keys);
    for (_, values) in storages {
        f.extend((values.len() as u64).to_le_bytes());
        for v in *values {
            f.extend(v.to_le_bytes());
        }
    }
    f
}

fn read_bytes(bytes: &[u8]) -> Result<TensorFile> {
    read(Path::new("t.pth"), bytes)
}

fn f32s(file: &TensorFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = &file.tensors[name];
    match &t.data {
        Data::F32(v) => (t.shape.clone(), v.clone()),
        other => panic!("{name}: {}", other.dtype()),
    }
}

fn run_one(pickle: &[u8]) -> Result<(Value, Vec<Obj>)> {
    let mut shared = Shared::default();
    let u = unpickle(Path::new("t.pkl"), "test", pickle, 0, &mut shared)?;
    Ok((u.value, u.objects))
}

fn is_unsafe(r: Result<impl std::fmt::Debug>, what: &str) {
    match r {
        Err(Error::UnsafePickle { what: w, .. }) => assert!(w.contains(what), "{w}"),
        other => panic!("expected UnsafePickle naming {what}, got {other:?}"),
    }
}

fn is_format(r: Result<impl std::fmt::Debug>, detail: &str) {
    match r {
        Err(e @ Error::Format { .. }) => assert!(e.to_string().contains(detail), "{e}"),
        other => panic!("expected a Format error with `{detail}`, got {other:?}"),
    }
}

const STORE: [f32; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];

#[test]
fn legacy_views_strides_and_offsets() {
    let obj = P::new()
        .ordered_dict()
        .op(b"(")
        .s("w")
        .tensor("k", 6, None, 0, &[2, 3], &[3, 1])
        .s("t")
        .tensor("k", 6, None, 0, &[3, 2], &[1, 3])
        .s("v")
        // A pre-0.4 storage view: elements 2..6 of `k`, tensor offset 1 inside it.
        .tensor("k", 6, Some((2, 4)), 1, &[3], &[1])
        .s("bcast")
        .tensor("k", 6, None, 4, &[2, 2], &[0, 1])
        .s("scalar")
        .tensor("k", 6, None, 5, &[], &[])
        .op(b"u")
        .stop();
    let f = read_bytes(&legacy(obj, &[("k", &STORE)])).unwrap();
    assert_eq!(f32s(&f, "w"), (vec![2, 3], STORE.to_vec()));
    assert_eq!(f32s(&f, "t"), (vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]));
    assert_eq!(f32s(&f, "v"), (vec![3], vec![3.0, 4.0, 5.0]));
    assert_eq!(f32s(&f, "bcast"), (vec![2, 2], vec![4.0, 5.0, 4.0, 5.0]));
    assert_eq!(f32s(&f, "scalar"), (vec![], vec![5.0]));
}

#[test]
fn tensors_reaching_outside_their_storage_are_format_errors() {
    let one = |offset, size: &[usize], stride: &[usize], view| {
        let obj = P::new().op(b"}").s("w").tensor("k", 6, view, offset, size, stride).op(b"s").stop();
        read_bytes(&legacy(obj, &[("k", &STORE)]))
    };
    is_format(one(6, &[1], &[1], None), "reaches past the end");
    is_format(one(1, &[2, 3], &[3, 1], None), "reaches past the end");
    is_format(one(0, &[3, 2], &[1, 4], None), "reaches past the end");
    is_format(one(0, &[5], &[1], Some((2, 4))), "reaches past the end");
    is_format(one(0, &[1], &[1], Some((4, 4))), "outside storage");
    is_format(one(0, &[2], &[1, 1], None), "dimensions but stride");
    // Stride 0 over a huge size: refused before anything is allocated.
    is_format(one(0, &[1 << 30, 1 << 30], &[0, 0], None), "more than a file of its size");
    // An empty tensor may sit anywhere.
    assert!(one(100, &[0, 3], &[3, 1], None).is_ok());
}

#[test]
fn legacy_storage_data_must_match_the_pickle() {
    let obj = P::new().op(b"}").s("w").tensor("k", 6, None, 0, &[6], &[1]).op(b"s").stop();
    // Element count in the data differs from the persistent id.
    is_format(read_bytes(&legacy(obj.clone(), &[("k", &STORE[..5])])), "5 elements in the data but 6");
    // A key no tensor describes.
    is_format(read_bytes(&legacy(obj.clone(), &[("k", &STORE), ("x", &STORE)])), "no tensor describes it");
    // No data for a storage a tensor needs.
    is_format(read_bytes(&legacy(obj.clone(), &[])), "has no data");
    // Truncated data.
    let full = legacy(obj, &[("k", &STORE)]);
    is_format(read_bytes(&full[..full.len() - 1]), "truncated in storage");
    // Wrong magic number.
    let mut bad_magic = full.clone();
    bad_magic[5] ^= 1;
    is_format(read_bytes(&bad_magic), "magic number");
}

#[test]
fn protocol_4_opcodes() {
    // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, BINUNICODE8, BINBYTES,
    // SHORT_BINBYTES, BINFLOAT, LONG1, BININT1/2, DUP, POP, LIST, DICT, TUPLE1..3.
    let mut p = vec![0x80, 4, 0x95];
    p.extend(0u64.to_le_bytes());
    p.extend([0x8c, 11]);
    p.extend(b"collections");
    p.push(0x94);
    p.extend([0x8c, 11]);
    p.extend(b"OrderedDict");
    p.extend([0x93, 0x94, b')', b'R', 0x94]); // OrderedDict()
    p.push(0x8d);
    p.extend(3u64.to_le_bytes());
    p.extend(b"key");
    p.extend(b"(");
    p.extend([b'G']);
    p.extend(0.25f64.to_be_bytes());
    p.extend([0x8a, 2, 0x00, 0x80]); // LONG1 -32768
    p.extend([0x8a, 1, 0xff]); // LONG1 -1
    p.extend([0x8a, 0]); // LONG1 0
    p.extend([b'K', 200, b'M', 0x34, 0x12]);
    p.extend([b'B', 2, 0, 0, 0, 1, 2, b'C', 1, 9]);
    p.extend([b'N', b'2', b'0']); // DUP then POP
    p.extend([0x88, 0x85, 0x89, 0x88, 0x86, b'N', b'N', b'N', 0x87]);
    p.extend(b"l"); // LIST of everything since the MARK
    p.extend(b"s."); // SETITEM
    let (v, objects) = run_one(&p).unwrap();
    let Value::Dict(d) = v else { panic!("{v:?}") };
    let Obj::Dict(d) = &objects[d] else { panic!() };
    let Value::List(l) = d[&Key::Str("key".into())] else { panic!() };
    let Obj::List(items) = &objects[l] else { panic!() };
    let text = format!("{items:?}");
    assert_eq!(
        text,
        "[Float(0.25), Int(-32768), Int(-1), Int(0), Int(200), Int(4660), Bytes([1, 2]), \
         Bytes([9]), None, Tuple([Bool(true)]), Tuple([Bool(false), Bool(true)]), \
         Tuple([None, None, None])]"
    );
}

#[test]
fn refuses_what_a_state_dict_does_not_need() {
    let g = |m: &str, n: &str| run_one(&P::new().global(m, n).stop());
    is_unsafe(g("os", "system"), "`os.system`");
    is_unsafe(g("posix", "system"), "`posix.system`");
    is_unsafe(g("builtins", "eval"), "`builtins.eval`");
    is_unsafe(g("torch", "load"), "`torch.load`");
    is_unsafe(g("torch._utils", "_rebuild_qtensor"), "_rebuild_qtensor");
    is_unsafe(g("torch.cuda", "Stream"), "torch.cuda.Stream");
    // STACK_GLOBAL goes through the same whitelist.
    let mut p = vec![0x80, 4, 0x8c, 8];
    p.extend(b"builtins");
    p.extend([0x8c, 4]);
    p.extend(b"exec");
    p.extend([0x93, b'.']);
    is_unsafe(run_one(&p), "`builtins.exec`");
    // Object-building opcodes, whatever they name.
    is_unsafe(run_one(b"\x80\x02ios\nsystem\n."), "INST");
    is_unsafe(run_one(b"\x80\x02(o."), "OBJ");
    is_unsafe(run_one(b"\x80\x02N)\x81."), "NEWOBJ");
    is_unsafe(run_one(b"\x80\x02\x82\x01."), "EXT1");
    is_unsafe(run_one(b"\x80\x02\x8f."), "EMPTY_SET");
    // Calling a storage class or a dtype.
    let call = P::new().global("torch", "FloatStorage").op(b")R").stop();
    is_unsafe(run_one(&call), "torch.FloatStorage");
    let call = P::new().global("torch", "float32").op(b")R").stop();
    is_unsafe(run_one(&call), "torch.float32");
    // BUILD may only set `_metadata` on a dict.
    let build = |attr: &str| P::new().ordered_dict().op(b"}").s(attr).op(b"}s").op(b"b").stop();
    assert!(run_one(&build("_metadata")).is_ok());
    is_unsafe(run_one(&build("__class__")), "__class__");
    is_unsafe(run_one(&P::new().op(b"]}b").stop()), "BUILD of a list");
    // Persistent ids other than storages (legacy files could embed module source).
    let pid = P::new().op(b"(").s("module").op(b"NNtQ").stop();
    is_unsafe(run_one(&pid), "`module`");
}

#[test]
fn malformed_pickles_are_format_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "truncated"),
        (b"\x80\x02", "truncated"),
        (b"\x80\x02X\xff\xff\xff\x7fab", "truncated"),
        (b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),
        (b"\x80\x02h\x05.", "memo entry 5"),
        (b"\x80\x02.", "stack underflow"),
        (b"\x80\x02N(0.", "stack underflow"),
        (b"\x80\x02t.", "no MARK"),
        (b"\x80\x02\xff", "unknown opcode 0xff"),
        (b"\x80\x06N.", "protocol 6"),
        (b"\x80\x02\x8a\x11", "too large"),
        (b"\x80\x02X\x02\x00\x00\x00\xc3\x28.", "UTF-8"),
        (b"\x80\x02}Na.", "APPEND to a dict"),
        (b"\x80\x02](NNNu.", "odd number"),
        (b"\x80\x02]NNs.", "SETITEM on a list"),
        (b"\x80\x02}]Ns.", "dict key"),
        (b"\x80\x02T\xff\xff\xff\xff", "negative"),
        (b"\x80\x02cos\nsys", "unterminated"),
        (b"\x80\x02N)R.", "REDUCE calls a None"),
        (b"\x80\x02N", "truncated"),
    ];
    for (pickle, detail) in cases {
        is_format(run_one(pickle), detail);
    }
    // Nesting and work are bounded.
    let deep = vec![b'('; MAX_MARKS + 1];
    is_format(run_one(&deep), "nested MARKs");
    let busy: Vec<u8> = b"N0".repeat(MAX_OPS / 2 + 1);
    is_format(run_one(&busy), "more than");
}

#[test]
fn python2_ordered_dict_and_its_copy_budget() {
    // Python 2 pickled `OrderedDict([[key, value], ...])`.
    let p = P::new().global("collections", "OrderedDict").op(b"((").s("a").op(b"Nl").s("b").op(b"Kx\x86l\x85R.");
    let (v, objects) = run_one(&p.0).unwrap();
    let Value::Dict(d) = v else { panic!("{v:?}") };
    let Obj::Dict(d) = &objects[d] else { panic!() };
    assert_eq!(d.len(), 2);
    assert!(matches!(d[&Key::Str("b".into())], Value::Int(120)));
    // Copying one big memoized list again and again runs out of budget, not memory.
    let mut p = P::new().op(b"](");
    for _ in 0..1000 {
        p = p.op(b"NN\x86");
    }
    p = p.op(b"eq\x00");
    for _ in 0..(MAX_OPS / 2000 + 1) {
        p = p.global("collections", "OrderedDict").op(b"h\x00\x85R0");
    }
    is_format(run_one(&p.stop()), "copied values");
}

#[test]
fn checkpoints_prefixes_and_non_tensors() {
    let t = |p: P, name: &str| p.s(name).tensor("k", 6, None, 0, &[6], &[1]);
    let file = |obj: Vec<u8>| read_bytes(&legacy(obj, &[("k", &STORE)]));
    // {"epoch": 3, "state_dict": {"module.a": .., "module.b": ..}}
    let wrapped =
        t(t(P::new().op(b"}(").s("epoch").int(3).s("state_dict").op(b"}("), "module.a"), "module.b").op(b"uu").stop();
    let f = file(wrapped).unwrap();
    assert_eq!(f.tensors.keys().collect::<Vec<_>>(), ["a", "b"]);
    // {"model": {...}} works the same.
    let model = t(P::new().op(b"}").s("model").op(b"}"), "x").op(b"ss").stop();
    assert!(file(model).unwrap().tensors.contains_key("x"));
    // A name with and without the prefix collides.
    let twice = t(t(P::new().op(b"}("), "module.a"), "a").op(b"u").stop();
    is_format(file(twice), "appears twice");
    // Non-tensor values are named.
    let lr = t(P::new().op(b"}("), "w").s("lr").int(1).op(b"u").stop();
    is_format(file(lr), "entry `lr` is a int");
    // A top level that is not a dict.
    let list = legacy(P::new().op(b"]").stop(), &[]);
    is_format(read_bytes(&list), "holds a list");
}

#[test]
fn unsupported_storage_types_are_dtype_errors() {
    let obj = P::new()
        .op(b"}")
        .s("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .s("storage")
        .global("torch", "ShortStorage")
        .s("k")
        .s("cpu")
        .int(2)
        .op(b"NtQ")
        .int(0)
        .ints(&[2])
        .ints(&[1])
        .op(&[0x89])
        .ordered_dict()
        .op(b"tRs")
        .stop();
    let mut f = legacy(obj, &[]);
    // The legacy data for `k`: 2 int16 elements.
    let keys = P::new().op(b"](").s("k").op(b"e").stop();
    let cut = f.len() - P::new().op(b"](").op(b"e").stop().len();
    f.truncate(cut);
    f.extend(keys);
    f.extend(2u64.to_le_bytes());
    f.extend([1, 0, 2, 0]);
    match read_bytes(&f) {
        Err(Error::DType { name, got, .. }) => assert_eq!((name.as_str(), got.as_str()), ("w", "int16")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn element_tables_are_consistent() {
    assert_eq!(elem_by_storage("FloatStorage").unwrap().dtype, Some(DType::F32));
    assert_eq!(elem_by_dtype("half").unwrap().dtype, Some(DType::F16));
    assert_eq!(untyped().dtype, Some(DType::U8));
    assert!(elem_by_storage("FooStorage").is_none());
    for e in &ELEMS {
        let expected = match e.dtype {
            Some(DType::F64 | DType::I64) => 8,
            Some(DType::F32 | DType::I32) => 4,
            Some(DType::F16 | DType::BF16) => 2,
            Some(DType::I8 | DType::U8) => 1,
            None => e.size,
        };
        assert_eq!(e.size, expected, "{}", e.name());
    }
}

/// A zip archive of stored entries written byte by byte, so that tests can make what no zip
/// writer makes: `aliases` are extra central-directory names pointing at the local header of
/// an existing entry (by index).
fn zip_bytes(entries: &[(&str, &[u8])], aliases: &[(&str, usize)]) -> Vec<u8> {
    let crc = |b: &[u8]| {
        let mut c = flate2::Crc::new();
        c.update(b);
        c.sum()
    };
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut offsets = Vec::new();
    let mut count = 0u16;
    let mut add_central = |central: &mut Vec<u8>, name: &str, data: &[u8], offset: usize| {
        central.extend(0x02014b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(crc(data).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend((offset as u32).to_le_bytes());
        central.extend(name.as_bytes());
        count += 1;
    };
    for (name, data) in entries {
        offsets.push(out.len());
        out.extend(0x04034b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(crc(data).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(*data);
    }
    for (i, (name, data)) in entries.iter().enumerate() {
        add_central(&mut central, name, data, offsets[i]);
    }
    for (name, i) in aliases {
        add_central(&mut central, name, entries[*i].1, offsets[*i]);
    }
    let cd_offset = out.len();
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend((cd_offset as u32).to_le_bytes());
    out.extend([0, 0]);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A pickle nesting `depth` TUPLE1s (which need no MARK) around None.
fn nested(depth: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'N'];
    p.extend(std::iter::repeat_n(0x85, depth));
    p.push(b'.');
    p
}

#[test]
fn zip_written_here_loads() {
    let pkl = P::new().op(b"}").s("w").tensor("0", 6, None, 0, &[2, 3], &[3, 1]).op(b"s").stop();
    let data = f32_bytes(&STORE);
    let f =
        read_bytes(&zip_bytes(&[("m/data.pkl", &pkl), ("m/byteorder", b"little"), ("m/data/0", &data)], &[])).unwrap();
    assert_eq!(f32s(&f, "w"), (vec![2, 3], STORE.to_vec()));
}

/// Defect 2: 100,000 nested TUPLE1s used to overflow the stack when the value was dropped
/// (a zip `data.pkl`) or formatted with `{:?}` (a legacy file's protocol version): SIGABRT.
/// Now the nesting is refused at depth 32, with a short message.
#[test]
fn deeply_nested_tuples_are_refused_not_a_stack_overflow() {
    let deep = nested(100_000);
    is_format(run_one(&deep), "nest more than 32");
    assert!(run_one(&nested(MAX_DEPTH)).is_ok());
    is_format(run_one(&nested(MAX_DEPTH + 1)), "nest more than");
    // Through a zip file's data.pkl.
    let z = zip_bytes(&[("m/data.pkl", &deep)], &[]);
    is_format(read_bytes(&z), "nest more than 32");
    // As a legacy file's protocol version: the error used to print the value with `{:?}`.
    let mut f = vec![0x80, 2, 0x8a, 10];
    f.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
    f.push(b'.');
    f.extend(nested(20));
    let e = read_bytes(&f).unwrap_err().to_string();
    assert!(e.contains("legacy protocol version a tuple") && e.len() < 200, "{e}");
    // A long string there is clipped, not copied whole into the message.
    let mut f2 = f[..f.len() - nested(20).len()].to_vec();
    f2.extend(P::new().s(&"x".repeat(100_000)).stop());
    let e = read_bytes(&f2).unwrap_err().to_string();
    assert!(e.len() < 300, "{}", e.len());
}

/// Defect 2: dropping is iterative, so even a tuple nested far deeper than the bound (built
/// here by hand, bypassing it) drops without recursion.
#[test]
fn dropping_a_deep_tuple_does_not_recurse() {
    let mut v = Value::None;
    for depth in 1..=1_000_000 {
        v = Value::Tuple(Rc::new(Tuple { depth, items: vec![v] }));
    }
    drop(v);
}

/// Defect 3: K central-directory names pointing at one stored entry, each a storage of the
/// pickle, were each read whole: K x the entry's size (4.6 MB reached 3.9 GB). Overlapping
/// entries are now refused before anything is read.
#[test]
fn overlapping_zip_entries_are_refused() {
    let mut pkl = P::new().op(b"}(");
    for k in 0..8 {
        pkl = pkl.s(&format!("w{k}")).tensor(&k.to_string(), 1, None, 0, &[1], &[1]);
    }
    let pkl = pkl.op(b"u").stop();
    let big = vec![0u8; 1 << 16];
    let aliases: Vec<(String, usize)> = (1..8).map(|k| (format!("m/data/{k}"), 1)).collect();
    let aliases: Vec<(&str, usize)> = aliases.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    let z = zip_bytes(&[("m/data.pkl", &pkl), ("m/data/0", &big)], &aliases);
    is_format(read_bytes(&z), "overlap");
}

/// Defect 16: a name given twice (last one won) is refused.
#[test]
fn duplicate_zip_entries_are_refused() {
    let pkl = P::new().op(b"}").s("w").tensor("0", 6, None, 0, &[6], &[1]).op(b"s").stop();
    let data = f32_bytes(&STORE);
    let z = zip_bytes(&[("m/data.pkl", &pkl), ("m/data/0", &data), ("m/data/0", &data)], &[]);
    is_format(read_bytes(&z), "twice");
}

/// Defect 3: a storage is read only as far as it needs (a one-element storage in a 1 MiB
/// entry reads 4 bytes), and the reads of one file are charged to one budget of its size.
#[test]
fn storages_read_only_what_they_need() {
    let pkl = P::new().op(b"}").s("w").tensor("0", 1, None, 0, &[1], &[1]).op(b"s").stop();
    let mut big = f32_bytes(&[7.5]);
    big.resize(1 << 20, 0);
    let f = read_bytes(&zip_bytes(&[("m/data.pkl", &pkl), ("m/data/0", &big)], &[])).unwrap();
    assert_eq!(f32s(&f, "w"), (vec![1], vec![7.5]));
}

/// Defect 10: tensors may not allocate more than a bounded multiple of the file's size
/// (stride-0 broadcasts and repeated views would otherwise amplify a small file).
#[test]
fn repeated_views_are_bounded_by_the_file_size() {
    let mut obj = P::new().op(b"}(");
    for k in 0..200 {
        obj = obj.s(&format!("v{k}")).tensor("k", 6, None, 0, &[1 << 12, 6], &[0, 1]);
    }
    let obj = obj.op(b"u").stop();
    is_format(read_bytes(&legacy(obj, &[("k", &STORE)])), "more than a file of its size");
}
