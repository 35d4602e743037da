import pytest

from tasks.core.recipe import RecipeError, apply_override, list_recipes, load_recipe, recipe_help


def test_every_builtin_recipe_loads_and_opens_with_its_command():
    recipes = list_recipes()
    assert "stats-qa" in recipes
    from tasks.core.recipe import RECIPES_DIR

    for name in recipes:
        recipe = load_recipe(name)
        assert recipe.name == name
        first_line = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert first_line == f"# python -m flows.full --recipe {name}"


def test_set_overrides_parse_values_as_yaml():
    recipe = load_recipe("stats-qa", ["train.sft.max_steps=3", "pairs.enabled=false", "train.lora.target_modules=[q_proj]"])
    assert recipe.train.sft.max_steps == 3
    assert recipe.pairs.enabled is False
    assert recipe.train.lora.target_modules == ["q_proj"]


def test_validation_error_names_the_field():
    with pytest.raises(RecipeError, match=r"train\.sft\.learning_rate"):
        load_recipe("stats-qa", ["train.sft.learning_rate=-1"])
    with pytest.raises(RecipeError, match=r"train\.nonsense"):
        load_recipe("stats-qa", ["train.nonsense=1"])
    with pytest.raises(RecipeError, match=r"validate\.max_examples"):
        load_recipe("stats-qa", ["validate.max_examples=0"])


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError, match="stats-qa"):
        load_recipe("no-such-recipe")


def test_serve_must_be_built():
    with pytest.raises(RecipeError, match="package.serve"):
        load_recipe("stats-qa", ["package.quantizations=[q8_0]", "package.serve=q4_k_m"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "train.sft=1=2x"])
def test_bad_assignments(bad):
    data = {"train": {"sft": {}}}
    if bad == "train.sft=1=2x":
        apply_override(data, bad)  # the value is everything after the first '='
        assert data["train"]["sft"] == "1=2x"
        return
    with pytest.raises(RecipeError):
        apply_override(data, bad)


def test_help_lists_fields_with_descriptions():
    text = recipe_help()
    assert "train.sft.max_steps" in text
    assert "curate.heldout_fraction" in text and "held-out" in text
