"""The errors that mean 'your input is wrong' (one line, exit 2), as opposed to our bugs."""

from tilert_compiler.codegen.cuda import CodegenError
from tilert_compiler.models.text import ConfigError
from tilert_compiler.passes.plan import PlanError
from tilert_compiler.passes.prefill import PrefillPlanError
from tilert_compiler.passes.tile import TileError
from tilert_compiler.runtime.artifact import ArtifactError

USER_ERRORS = (ConfigError, ArtifactError, CodegenError, TileError, PlanError, PrefillPlanError)
