//! Image files, grids and figures: round trips, clear errors, and the same bytes from the same seed.

use inkdrop::support::files::{prepare_out_dir, write_atomic};
use inkdrop::support::grid::{labelled_grid, spread_words, Tile};
use inkdrop::support::image_io::{
    astronaut, center_square, from_chw, load_image, save_png, to_chw,
};
use inkdrop::support::table::Table;
use inkdrop::Error;

#[test]
fn image_round_trip_through_png_and_model_space() {
    let dir = tempfile::tempdir().unwrap();
    let img = center_square(&astronaut().unwrap(), 64);
    assert_eq!(img.dimensions(), (64, 64));
    let path = dir.path().join("a.png");
    save_png(&img, &path).unwrap();
    let back = load_image(&path).unwrap();
    assert_eq!(back, img, "PNG is lossless");
    let x = to_chw(&img); // (3, 64, 64) in [-1, 1]
    assert_eq!(x.dim(), (3, 64, 64));
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert_eq!(
        from_chw(&x).unwrap(),
        img,
        "bytes -> [-1, 1] -> bytes is exact"
    );
}

#[test]
fn missing_file_not_an_image_and_bad_out_dir_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let err = load_image(&missing).unwrap_err();
    assert!(matches!(err, Error::ImageNotFound { .. }));
    assert!(
        err.to_string().contains("nope.png") && err.to_string().contains("check the path"),
        "{err}"
    );

    let text = dir.path().join("notes.png");
    std::fs::write(&text, "this is not a picture").unwrap();
    let err = load_image(&text).unwrap_err();
    assert!(matches!(err, Error::NotAnImage { .. }), "{err:?}");
    assert!(err.to_string().contains("PNG or JPEG"), "{err}");

    let truncated = dir.path().join("cut.png");
    let mut png = Vec::new();
    save_png(&center_square(&astronaut().unwrap(), 16), &truncated).unwrap();
    png.extend_from_slice(&std::fs::read(&truncated).unwrap()[..40]);
    std::fs::write(&truncated, png).unwrap();
    assert!(matches!(
        load_image(&truncated).unwrap_err(),
        Error::NotAnImage { .. }
    ));

    let file = dir.path().join("a_file");
    std::fs::write(&file, "x").unwrap();
    let err = prepare_out_dir(&file.join("sub")).unwrap_err();
    assert!(err.to_string().contains("--out"), "{err}");
    let err = prepare_out_dir(&file).unwrap_err();
    assert!(
        err.to_string().contains("a file with that name exists"),
        "{err}"
    );
}

#[test]
fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.txt");
    write_atomic(&path, b"first").unwrap();
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
}

#[test]
fn atomic_write_creates_missing_folders() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/deeper/w.txt");
    write_atomic(&path, b"weights").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"weights");
}

#[test]
fn grid_draws_its_labels_and_is_reproducible() {
    let tile = |v: u8| Tile {
        image: image::RgbImage::from_pixel(32, 32, image::Rgb([v, 0, 0])),
        caption: vec!["t = 1".into()],
    };
    let grid = labelled_grid(&[tile(10), tile(200)], 2, Some("Title")).unwrap();
    // The caption band under the first tile must contain dark text pixels (font loaded).
    let (top, th) = (32u32, 32u32);
    let dark = (8..40)
        .flat_map(|x| (top + th..top + th + 18).map(move |y| (x, y)))
        .filter(|&(x, y)| grid.get_pixel(x, y)[0] < 128)
        .count();
    assert!(dark > 5, "no caption drawn ({dark} dark pixels)");
    let again = labelled_grid(&[tile(10), tile(200)], 2, Some("Title")).unwrap();
    assert_eq!(grid, again);
}

#[test]
fn tables_render_as_text_and_markdown() {
    let mut t = Table::new(["t", "alpha_bar"]);
    t.row(["0", "0.9991"]).row(["999", "0.0047"]);
    assert_eq!(
        t.to_text(),
        "  t  alpha_bar\n--------------\n  0     0.9991\n999     0.0047"
    );
    assert_eq!(
        t.to_markdown(),
        "|   t | alpha_bar |\n| --: | --------: |\n|   0 |    0.9991 |\n| 999 |    0.0047 |\n"
    );
}

#[test]
fn a_long_caption_is_spread_over_its_tiles_word_by_word() {
    let lines = spread_words("a white square above a purple circle", 8, 9);
    assert_eq!(
        lines,
        ["a white", "square", "above a", "purple", "circle", "", "", ""]
    );
    // Read back in order, nothing is lost or cut inside a word.
    assert_eq!(
        lines
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        "a white square above a purple circle"
    );
    // Too long for the tiles: the last one says so.
    assert_eq!(spread_words("one two three", 2, 3), ["one", "two ..."]);
    // A word wider than a tile still gets one of its own.
    assert_eq!(spread_words("a triangle", 2, 3), ["a", "triangle"]);
    assert_eq!(spread_words("", 0, 5), [""]);
}

/// `backward_with` gives the gradients that `dy` as y's gradient implies (here y = 3x + x^2, so
/// dx = dy * (3 + 2x)), not those of a seed of ones, and rejects a gradient of another shape.
#[test]
fn backward_with_uses_the_given_output_gradient() {
    use candle_core::{Device, Tensor, Var};
    use inkdrop::support::bench::backward_with;
    let x = Var::from_vec(vec![1f32, -2.0, 0.5, 4.0], (2, 2), &Device::Cpu).unwrap();
    let y = ((x.as_tensor() * 3.0).unwrap() + x.as_tensor().sqr().unwrap()).unwrap();
    let dy = Tensor::from_vec(vec![0.5f32, 2.0, -1.0, 0.25], (2, 2), &Device::Cpu).unwrap();
    let grads = backward_with(&y, &dy).unwrap();
    let dx: Vec<f32> = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // dy * (3 + 2x): 0.5 * 5, 2 * (-1), (-1) * 4, 0.25 * 11.
    assert_eq!(dx, vec![2.5, -2.0, -4.0, 2.75]);
    let wrong = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = backward_with(&y, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("output gradient [4] for an output [2, 2]"),
        "{err}"
    );
}
