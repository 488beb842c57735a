"""cost: MACs and parameters per layer and in total, and the table."""

import keras
import pytest

from tflowrank import cost, factorize


def test_macs_of_every_counted_layer_kind():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)  # 32x32
    x = keras.layers.Conv2D(16, (3, 5), strides=(2, 1), padding="valid", groups=2,
                            name="grouped")(x)  # 15x28
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="valid", name="sep")(x)  # 13x26
    x = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up")(x)  # 26x52
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(6, name="dense")(x)  # on the last axis of 26x52x4
    model = keras.Model(inputs, x, name="kinds")
    rows = {row.name: row for row in cost(model).layers}
    assert rows["conv"].macs == 32 * 32 * 9 * 3 * 16
    assert rows["grouped"].macs == 15 * 28 * 15 * 8 * 16
    assert rows["dw"].macs == 15 * 28 * 9 * 16 * 2
    assert rows["sep"].macs == 13 * 26 * (9 * 32 + 32 * 8)
    assert rows["up"].macs == 13 * 26 * 4 * 8 * 4
    assert rows["dense"].macs == 26 * 52 * 4 * 6
    assert not rows["bn"].counted and rows["bn"].macs is None and rows["bn"].params == 16
    total = cost(model)
    assert total.macs == sum(r.macs for r in rows.values() if r.counted)
    assert total.params == model.count_params()
    assert total.macs_of("Conv2D") == rows["conv"].macs + rows["grouped"].macs


def test_factorized_layers_report_rank_and_what_they_replaced():
    model = keras.Sequential([keras.Input((16, 16, 8)),
                              keras.layers.Conv2D(32, 3, padding="same", name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(10, name="d")])
    before = cost(model)
    new = factorize(model, "svd", rank={"c": 4, "d": 3})
    rows = {row.name: row for row in cost(new).layers}
    assert rows["c"].class_name == "SVDConv2D"
    assert (rows["c"].rank, rows["c"].full_rank) == (4, 32)
    assert rows["c"].dense_macs == before.layers[0].macs
    assert rows["c"].macs == 16 * 16 * (9 * 8 * 4 + 4 * 32)
    assert rows["d"].macs == 16 * 16 * 32 * 3 + 3 * 10
    assert 0 < rows["c"].reconstruction_error < 1
    table = str(cost(new))
    assert "4/32" in table and "SVDConv2D" in table and "total" in table


def test_nested_models_are_costed_once_per_call():
    encoder = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="enc")],
                               name="encoder")
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    out = keras.layers.Concatenate()([encoder(a), encoder(b)])
    model = keras.Model([a, b], out)
    rows = cost(model).layers
    assert [r.name for r in rows] == ["encoder/enc", "encoder/enc"]
    assert cost(model).macs == 2 * 6 * 6 * 9 * 3 * 4


def test_unknown_spatial_size_is_reported_not_guessed():
    model = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, name="c")])
    result = cost(model)
    assert result.layers[0].macs is None and result.macs == 0
    assert "?" in str(result) and "not statically known" in str(result)


def test_table_lists_layers_and_totals():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="only")],
                             name="tiny")
    lines = str(cost(model)).splitlines()
    assert lines[0] == "Model 'tiny': 648 MACs per sample, 20 parameters"
    assert lines[3].split() == ["only", "Conv2D", "6x6x2", "648", "100.0%", "20", "-", "-", "-"]
    assert lines[-1].split() == ["total", "648", "100.0%", "20"]


def test_bad_model_argument():
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        cost(None)
