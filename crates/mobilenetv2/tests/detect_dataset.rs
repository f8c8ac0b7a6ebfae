//! Detection datasets (COCO JSON, Pascal VOC XML): good files read into the boxes they hold,
//! and every kind of bad record gives a one-line error naming the file and the record, or is
//! skipped and counted under `BadAnnotations::Skip`. The fixtures are written here, small and
//! by hand, one defect each.

use std::path::{Path, PathBuf};

use mobilenetv2::detect::cocoeval;
use mobilenetv2::detect::dataset::{BadAnnotations, DatasetFormat, DetectionDataset};

/// A fresh folder for one use (tests run in parallel: each call gets its own).
fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("mnv2-detds-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A COCO dataset: `ann` is the JSON text; images a.jpg and b.jpg exist (contents unread).
fn coco(tag: &str, ann: &str) -> (PathBuf, PathBuf) {
    let d = scratch(tag);
    std::fs::create_dir_all(d.join("images")).unwrap();
    for f in ["a.jpg", "b.jpg"] {
        std::fs::write(d.join("images").join(f), b"not decoded").unwrap();
    }
    let p = d.join("instances.json");
    std::fs::write(&p, ann).unwrap();
    (p, d.join("images"))
}

/// A valid COCO file with `anns` spliced in as its annotations.
fn coco_text(images: &str, anns: &str) -> String {
    format!(
        r#"{{"images": [{images}], "annotations": [{anns}],
            "categories": [{{"id": 3, "name": "cat"}}, {{"id": 1, "name": "dog"}}]}}"#
    )
}

const IMAGES: &str = r#"{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50}"#;

fn good_anns() -> String {
    [
        r#"{"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1000, "iscrowd": 0,
            "segmentation": [[10, 20, 40, 20, 40, 60]]}"#,
        r#"{"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 80], "iscrowd": 1,
            "segmentation": {"size": [80, 100], "counts": [100, 7900]}}"#,
        r#"{"id": 12, "image_id": 2, "category_id": 1, "bbox": [49.5, 0, 1.2, 50]}"#,
    ]
    .join(",")
}

fn read_coco(tag: &str, text: &str, mode: BadAnnotations) -> Result<DetectionDataset, String> {
    let (p, imgs) = coco(tag, text);
    let r = DetectionDataset::open_coco(&p, &imgs, mode).map_err(|e| e.to_string());
    std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    r
}

#[test]
fn coco_reads_boxes_classes_and_flags() {
    let ds = read_coco("good", &coco_text(IMAGES, &good_anns()), BadAnnotations::Stop).unwrap();
    assert_eq!(ds.format, DatasetFormat::Coco);
    // Classes sorted by id: dog (1), cat (3).
    assert_eq!(ds.categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["dog", "cat"]);
    assert_eq!(ds.images.len(), 2);
    let a = &ds.images[0];
    assert_eq!((a.id, a.width, a.height), (1, 100, 80));
    assert!(a.path.ends_with("images/a.jpg"));
    assert_eq!(a.boxes[0].bbox, [10.0, 20.0, 40.0, 60.0]);
    assert_eq!((a.boxes[0].class, a.boxes[0].crowd, a.boxes[0].area), (1, false, 1000.0));
    assert_eq!((a.boxes[1].class, a.boxes[1].crowd), (0, true));
    // 0.7 px past the right edge: clipped; area from w * h where the file has none.
    let b = &ds.images[1].boxes[0];
    assert_eq!(b.bbox, [49.5, 0.0, 50.0, 50.0]);
    assert!((b.area - 60.0).abs() < 1e-4);
    assert_eq!(ds.skipped, 0);
    assert_eq!(ds.num_boxes(), 3);

    // As ground truth for the evaluation: a detection on each box gives AP 1.
    let gt = ds.to_ground_truth();
    let dets: Vec<cocoeval::DetectionResult> = gt
        .annotations()
        .iter()
        .map(|a| cocoeval::DetectionResult {
            image_id: a.image_id,
            category_id: a.category_id,
            bbox: a.bbox,
            score: 1.0,
        })
        .collect();
    let e = cocoeval::evaluate(&gt, &dets).unwrap();
    // (pycocotools' precision is tp / (tp + fp + eps): 1 - 1e-16, not 1.)
    assert!((e.stats[1] - 1.0).abs() < 1e-12, "{}", e.summary_table());
}

/// Each defect: the annotation text, what the message must name.
fn coco_defects() -> Vec<(&'static str, String, &'static str)> {
    let ann = |s: &str| coco_text(IMAGES, &format!("{},{s}", good_anns()));
    vec![
        (
            "outside",
            ann(r#"{"id": 20, "image_id": 2, "category_id": 1, "bbox": [40, 40, 20, 5]}"#),
            "annotation 20 (image 2): box [40, 40, 60, 45] lies outside the 50x50 image",
        ),
        (
            "zero-size",
            ann(r#"{"id": 21, "image_id": 2, "category_id": 1, "bbox": [4, 4, 0, 5]}"#),
            "annotation 21 (image 2): box [4, 4, 4, 9] has a zero or negative size",
        ),
        (
            "negative",
            ann(r#"{"id": 22, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, -5]}"#),
            "annotation 22 (image 2): box",
        ),
        (
            "unknown-category",
            ann(r#"{"id": 23, "image_id": 2, "category_id": 7, "bbox": [4, 4, 5, 5]}"#),
            "annotation 23 (image 2): category 7 is not listed",
        ),
        (
            "unknown-image",
            ann(r#"{"id": 24, "image_id": 9, "category_id": 1, "bbox": [4, 4, 5, 5]}"#),
            "annotation 24 (image 9): its image is not among the images",
        ),
        (
            "duplicate-ann-id",
            ann(r#"{"id": 10, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5]}"#),
            "annotation 10 (image 2): the id is used twice",
        ),
        (
            "bbox-len",
            ann(r#"{"id": 25, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5]}"#),
            "annotation 25 (image 2): bbox has 3 numbers",
        ),
        (
            "iscrowd",
            ann(r#"{"id": 26, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5], "iscrowd": 2}"#),
            "annotation 26 (image 2): iscrowd is 2",
        ),
        (
            "polygon",
            ann(r#"{"id": 27, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5], "segmentation": [[1, 2, 3]]}"#),
            "annotation 27 (image 2): segmentation: polygon 0 has 3 numbers",
        ),
        (
            "rle-size",
            ann(
                r#"{"id": 28, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5], "segmentation": {"size": [10, 10], "counts": [100]}}"#,
            ),
            "annotation 28 (image 2): segmentation: RLE size [10, 10] is not the image's [50, 50]",
        ),
        (
            "rle-runs",
            ann(
                r#"{"id": 29, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5], "segmentation": {"size": [50, 50], "counts": [100, 3]}}"#,
            ),
            "annotation 29 (image 2): segmentation: RLE runs cover 103 pixels",
        ),
        (
            "rle-string",
            ann(
                r#"{"id": 30, "image_id": 2, "category_id": 1, "bbox": [4, 4, 5, 5], "segmentation": {"size": [50, 50], "counts": "1~"}}"#,
            ),
            "annotation 30 (image 2): segmentation: RLE `counts` string",
        ),
        (
            "missing-file",
            coco_text(
                &format!(r#"{IMAGES}, {{"id": 3, "file_name": "c.jpg", "width": 5, "height": 5}}"#),
                &good_anns(),
            ),
            "image 3: image file",
        ),
        (
            "escape",
            coco_text(
                &format!(r#"{IMAGES}, {{"id": 3, "file_name": "../a.jpg", "width": 5, "height": 5}}"#),
                &good_anns(),
            ),
            "image 3: file name \"../a.jpg\" is not a plain path",
        ),
        (
            "no-size",
            coco_text(&format!(r#"{IMAGES}, {{"id": 3, "file_name": "a.jpg"}}"#), &good_anns()),
            "image 3: `width` and `height` are required",
        ),
        (
            "zero-width",
            coco_text(
                &format!(r#"{IMAGES}, {{"id": 3, "file_name": "a.jpg", "width": 0, "height": 5}}"#),
                &good_anns(),
            ),
            "image 3: size 0x5",
        ),
        (
            "duplicate-image-id",
            coco_text(
                &format!(r#"{IMAGES}, {{"id": 2, "file_name": "a.jpg", "width": 5, "height": 5}}"#),
                &good_anns(),
            ),
            "image 2: the id is listed twice",
        ),
    ]
}

#[test]
fn coco_bad_records_stop_with_the_file_and_the_record() {
    for (tag, text, want) in coco_defects() {
        let e = read_coco(tag, &text, BadAnnotations::Stop).unwrap_err();
        assert!(e.contains("instances.json") && e.contains(want), "{tag}: {e}");
        assert!(!e.contains('\n'), "{tag}: not one line: {e}");
    }
}

#[test]
fn coco_bad_records_are_skipped_and_counted() {
    for (tag, text, _) in coco_defects() {
        let ds = read_coco(tag, &text, BadAnnotations::Skip).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(ds.skipped, 1, "{tag}");
        assert_eq!(ds.skip_messages.len(), 1, "{tag}");
        // The good records are all there.
        assert_eq!(ds.images.len(), 2, "{tag}");
        assert_eq!(ds.num_boxes(), 3, "{tag}");
    }
    // An image skipped takes its boxes with it (counted once, as the image).
    let text = coco_text(
        &format!(r#"{IMAGES}, {{"id": 3, "file_name": "gone.jpg", "width": 5, "height": 5}}"#),
        &format!(r#"{}, {{"id": 40, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]}}"#, good_anns()),
    );
    let ds = read_coco("skip-image", &text, BadAnnotations::Skip).unwrap();
    assert_eq!((ds.skipped, ds.images.len(), ds.num_boxes()), (1, 2, 3));
}

#[test]
fn coco_files_that_do_not_parse_always_stop() {
    let full = coco_text(IMAGES, &good_anns());
    let cases = [
        ("truncated", full[..full.len() / 2].to_string(), "EOF while parsing"),
        (
            "duplicate-key",
            full.replacen(r#""area": 1000,"#, r#""area": 1000, "area": 5,"#, 1),
            "duplicate field `area`",
        ),
        (
            "duplicate-top-key",
            full.replacen(r#""categories""#, r#""images": [], "categories""#, 1),
            "duplicate field `images`",
        ),
        (
            "duplicate-rle-key",
            full.replacen(r#""counts": [100, 7900]"#, r#""counts": [100, 7900], "counts": [8000]"#, 1),
            "duplicate field `counts`",
        ),
        ("wrong-type", full.replacen(r#""image_id": 2"#, r#""image_id": "2""#, 1), "invalid type"),
        ("not-json", "\u{1}\u{2}".to_string(), "expected value"),
    ];
    for (tag, text, want) in cases {
        for mode in [BadAnnotations::Stop, BadAnnotations::Skip] {
            let e = read_coco(tag, &text, mode).unwrap_err();
            assert!(e.contains("instances.json: not a valid COCO annotations file") && e.contains(want), "{tag}: {e}");
            assert!(e.contains("line "), "{tag}: the position is named: {e}");
        }
    }
    // Not a regular file: refused before reading.
    let d = scratch("dev");
    let e = DetectionDataset::open_coco(Path::new("/dev/zero"), &d, BadAnnotations::Stop).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A VOC tree with image ids 000001 and 000002 (their JPEGs exist) and the given XML texts.
fn voc(tag: &str, xmls: &[(&str, &str)], list: &str) -> PathBuf {
    let d = scratch(tag);
    for sub in ["Annotations", "ImageSets/Main", "JPEGImages"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for id in ["000001", "000002"] {
        std::fs::write(d.join("JPEGImages").join(format!("{id}.jpg")), b"not decoded").unwrap();
    }
    for (id, text) in xmls {
        std::fs::write(d.join("Annotations").join(format!("{id}.xml")), text).unwrap();
    }
    std::fs::write(d.join("ImageSets/Main/val.txt"), list).unwrap();
    d
}

fn voc_xml(objects: &str) -> String {
    format!(
        "<annotation><folder>VOC2007</folder><filename>000001.jpg</filename>\
         <size><width>100</width><height>80</height><depth>3</depth></size>{objects}</annotation>"
    )
}

const DOG: &str = "<object><name>dog</name><pose>Left</pose><truncated>0</truncated><difficult>0</difficult>\
                   <bndbox><xmin>11</xmin><ymin>21</ymin><xmax>40</xmax><ymax>60</ymax></bndbox></object>";
const PERSON: &str = "<object><name>person</name><difficult>1</difficult>\
                      <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>100</xmax><ymax>80</ymax></bndbox></object>";

fn read_voc(tag: &str, second: &str, mode: BadAnnotations) -> Result<DetectionDataset, String> {
    let d = voc(tag, &[("000001", &voc_xml(&format!("{DOG}{PERSON}"))), ("000002", second)], "000001\n000002\n");
    let r = DetectionDataset::open_voc(&d, "val", None, mode).map_err(|e| e.to_string());
    std::fs::remove_dir_all(&d).unwrap();
    r
}

#[test]
fn voc_reads_boxes_classes_and_difficult() {
    let second = voc_xml(DOG).replace("000001.jpg", "000002.jpg");
    let ds = read_voc("good", &second, BadAnnotations::Stop).unwrap();
    assert_eq!(ds.format, DatasetFormat::Voc);
    assert_eq!(ds.categories.len(), 20);
    assert_eq!(ds.images.len(), 2);
    let a = &ds.images[0];
    assert_eq!((a.width, a.height), (100, 80));
    assert!(a.path.ends_with("JPEGImages/000001.jpg"));
    // 1-based inclusive pixels -> continuous: (xmin - 1, ymin - 1, xmax, ymax).
    assert_eq!(a.boxes[0].bbox, [10.0, 20.0, 40.0, 60.0]);
    assert_eq!(ds.categories[a.boxes[0].class].name, "dog");
    assert!(!a.boxes[0].difficult);
    assert_eq!(a.boxes[1].bbox, [0.0, 0.0, 100.0, 80.0]);
    assert!(a.boxes[1].difficult);
    assert!(ds.images[1].path.ends_with("JPEGImages/000002.jpg"));

    // Own classes: "dog" is index 1 of ["person", "dog"].
    let d = voc("classes", &[("000001", &voc_xml(&format!("{DOG}{PERSON}")))], "000001\n");
    let classes = vec!["person".to_string(), "dog".to_string()];
    let ds = DetectionDataset::open_voc(&d, "val", Some(&classes), BadAnnotations::Stop).unwrap();
    assert_eq!(ds.images[0].boxes[0].class, 1);
    // The layout is recognised by `open`.
    assert_eq!(DetectionDataset::open(&d, "val", BadAnnotations::Stop).unwrap().format, DatasetFormat::Voc);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Defects of the second image's XML: (tag, XML text, what the message names, whether the whole
/// image goes (true) or one object (false) under Skip).
fn voc_defects() -> Vec<(&'static str, String, &'static str, bool)> {
    let with = |obj: &str| voc_xml(&format!("{DOG}{obj}")).replace("000001.jpg", "000002.jpg");
    let bnd = |x0: &str, y0: &str, x1: &str, y1: &str| {
        with(&format!(
            "<object><name>cat</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        ))
    };
    let full = with("");
    vec![
        ("outside", bnd("50", "10", "120", "20"), "000002.xml: not a valid Pascal VOC annotation file: object 1: box [49, 9, 120, 20] lies outside the 100x80 image", false),
        ("negative", bnd("50", "10", "40", "20"), "object 1: box xmin 50 ymin 10 xmax 40 ymax 20 has a zero or negative size", false),
        ("unknown-class", with("<object><name>unicorn</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"), "object 1: class \"unicorn\" is not one of the classes", false),
        ("not-a-number", bnd("a", "10", "40", "20"), "object 1: <xmin> is \"a\", not a number", false),
        ("missing-coordinate", with("<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax></bndbox></object>"), "object 1: <ymax> is missing", false),
        ("duplicate-coordinate", bnd("1", "1", "2</xmax><xmax>3", "2"), "object 1: <bndbox> has more than one <xmax>", false),
        ("difficult", with("<object><name>cat</name><difficult>yes</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object>"), "object 1: <difficult> is \"yes\"", false),
        ("truncated", full[..full.len() - 20].to_string(), "000002.xml: not a valid Pascal VOC annotation file: ", true),
        ("not-annotation", "<foo/>".to_string(), "the root element is <foo>", true),
        ("no-size", "<annotation><filename>000002.jpg</filename></annotation>".to_string(), "<size> is missing", true),
        ("duplicate-size", full.replace("<size>", "<size><width>1</width></size><size>"), "<annotation> has more than one <size>", true),
        ("bad-width", full.replace("<width>100</width>", "<width>-3</width>"), "<width> is -3, not a pixel count", true),
        ("missing-image", full.replace("000002.jpg", "000009.jpg"), "image file", true),
        ("entity", format!("<!DOCTYPE a [<!ENTITY x \"y\">]>{full}"), "000002.xml: not a valid Pascal VOC annotation file: ", true),
    ]
}

#[test]
fn voc_bad_records_stop_with_the_file_and_the_record() {
    for (tag, text, want, _) in voc_defects() {
        let e = read_voc(tag, &text, BadAnnotations::Stop).unwrap_err();
        assert!(e.contains("Annotations/000002.xml") && e.contains(want), "{tag}: {e}");
        assert!(!e.contains('\n'), "{tag}: not one line: {e}");
    }
    // A listed image without its XML.
    let d = voc("no-xml", &[("000001", &voc_xml(DOG))], "000001\n000002\n");
    let e = DetectionDataset::open_voc(&d, "val", None, BadAnnotations::Stop).unwrap_err().to_string();
    assert!(e.contains("Annotations/000002.xml"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
    // Ids that would leave the folder; ids listed twice.
    for (list, want) in
        [("../x\n", "line 1: file name \"../x\""), ("000001\n000001\n", "line 2: image 000001 is listed twice")]
    {
        let d = voc("bad-list", &[("000001", &voc_xml(DOG))], list);
        let e = DetectionDataset::open_voc(&d, "val", None, BadAnnotations::Stop).unwrap_err().to_string();
        assert!(e.contains("ImageSets/Main/val.txt") && e.contains(want), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn voc_bad_records_are_skipped_and_counted() {
    for (tag, text, _, whole_image) in voc_defects() {
        let ds = read_voc(tag, &text, BadAnnotations::Skip).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(ds.skipped, 1, "{tag}: {:?}", ds.skip_messages);
        let (images, boxes) = if whole_image { (1, 2) } else { (2, 3) };
        assert_eq!((ds.images.len(), ds.num_boxes()), (images, boxes), "{tag}");
    }
}

#[test]
fn open_finds_the_composed_and_coco_2017_layouts() {
    let d = scratch("layouts");
    // mnv2 dataset compose: DIR/val/instances.json + DIR/val/images/.
    std::fs::create_dir_all(d.join("val/images")).unwrap();
    std::fs::write(d.join("val/images/a.jpg"), b"x").unwrap();
    std::fs::write(d.join("val/images/b.jpg"), b"x").unwrap();
    std::fs::write(d.join("val/instances.json"), coco_text(IMAGES, &good_anns())).unwrap();
    let ds = DetectionDataset::open(&d, "val", BadAnnotations::Stop).unwrap();
    assert_eq!((ds.format, ds.images.len()), (DatasetFormat::Coco, 2));
    // COCO 2017: DIR/annotations/instances_val2017.json + DIR/val2017/.
    std::fs::create_dir_all(d.join("annotations")).unwrap();
    std::fs::create_dir_all(d.join("val2017")).unwrap();
    std::fs::write(d.join("val2017/a.jpg"), b"x").unwrap();
    std::fs::write(d.join("val2017/b.jpg"), b"x").unwrap();
    std::fs::write(d.join("annotations/instances_val2017.json"), coco_text(IMAGES, &good_anns())).unwrap();
    let ds = DetectionDataset::open(&d, "val2017", BadAnnotations::Stop).unwrap();
    assert!(ds.images[0].path.ends_with("val2017/a.jpg"));
    let e = DetectionDataset::open(&d, "test", BadAnnotations::Stop).unwrap_err().to_string();
    assert!(e.contains("no detection dataset for split `test`"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}
