"""The model-family seam: sd-scripts' strings per family and prediction type."""
import pytest

from library.models.family import FAMILIES, family_of


def test_registry_and_strings():
    assert set(FAMILIES) == {"sd1", "sd2", "sdxl"}
    sd1, sd2, sdxl = FAMILIES["sd1"], FAMILIES["sd2"], FAMILIES["sdxl"]
    assert sd1.base_model_version() == "sd_v1" and sd1.modelspec_architecture() == "stable-diffusion-v1/lora"
    assert sd2.base_model_version("epsilon") == "sd_v2"
    assert sd2.base_model_version("v") == "sd_v2_v"
    assert sd2.modelspec_architecture("epsilon") == "stable-diffusion-v2-512/lora"
    assert sd2.modelspec_architecture("v_prediction") == "stable-diffusion-v2-768-v/lora"
    assert sdxl.modelspec_architecture() == "stable-diffusion-xl-v1-base/lora"
    assert sdxl.base_model_version() == "sdxl_base_v1-0"
    assert sd2.ss_v2 and not sd1.ss_v2 and not sdxl.ss_v2
    assert sdxl.lora_te_prefixes == ("lora_te1_", "lora_te2_") and sd2.lora_te_prefixes == ("lora_te_",)
    assert (sd1.cross_attention_dim, sd2.cross_attention_dim, sdxl.cross_attention_dim) == (768, 1024, 2048)


def test_family_of_names_and_facts():
    class Facts:
        architecture = "sd2"
    assert family_of(Facts()).name == "sd2"
    assert family_of("stable-diffusion-v2-768-v/lora").name == "sd2"
    assert family_of("SD1").name == "sd1"
    with pytest.raises(ValueError, match="unknown model family"):
        family_of("flux")


def test_sd1_facts_metadata_unchanged():
    from library.lora.metadata import model_metadata_from_facts

    class Facts:
        architecture = "sd1"; prediction_type = "epsilon"; name = "m"; legacy_hash = None; model_hash = "h"
    assert model_metadata_from_facts(Facts())["ss_base_model_version"] == "sd_v1"
    Facts.architecture = "sd2"; Facts.prediction_type = "v_prediction"
    assert model_metadata_from_facts(Facts())["ss_base_model_version"] == "sd_v2_v"


def test_modelspec_architecture_via_family():
    from library.lora.metadata import modelspec_metadata

    def arch(**kw):
        return modelspec_metadata(title="t", resolution=512, timestamp=0, **kw)["modelspec.architecture"]
    assert arch() == "stable-diffusion-v1/lora"
    assert arch(v_parameterization=True) == "stable-diffusion-v1/lora"
    assert arch(v2=True) == "stable-diffusion-v2-512/lora"
    assert arch(v2=True, v_parameterization=True) == "stable-diffusion-v2-768-v/lora"
