//! Built-in class names.

use std::sync::LazyLock;

/// ImageNet-1k class names in classifier order, each the first of its synonyms
/// ("Egyptian cat", "espresso"), as torchvision displays them.
pub static IMAGENET: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("../data/imagenet_classes.txt").lines().map(|l| l.split(", ").next().unwrap_or(l)).collect()
});

/// PASCAL VOC's classes in the devkit's order, background first: the 21 labels of VOC 2012
/// segmentation masks; the 20 object classes of its detection annotations are `VOC[1..]`.
pub const VOC: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_names() {
        let l = &super::IMAGENET;
        assert_eq!(l.len(), 1000);
        assert_eq!(l[0], "tench");
        assert_eq!(l[285], "Egyptian cat");
        assert_eq!(l[967], "espresso");
    }
}
