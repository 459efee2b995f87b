"""Start a smolfusion_ros profile on a robot: ros2 launch smolfusion_ros smolfusion.launch.py
profile:=cpu_demo|jetson_gguf|gpu_server [namespace:=robot1] [params_file:=my.yaml]

Thin on purpose: which nodes run and which parameter file they read come from
config/profiles.yaml through smolfusion_ros.core.profile, the same description the
in-process bringup (make demo) uses and the tests check.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from smolfusion_ros.core.profile import get_profile


def _nodes_for_profile(context, *_args, **_kwargs):
    profile = get_profile(LaunchConfiguration("profile").perform(context))
    params_file = LaunchConfiguration("params_file").perform(context) or str(
        profile.parameters_file
    )
    namespace = LaunchConfiguration("namespace").perform(context)
    return [
        Node(
            package="smolfusion_ros",
            executable=name,
            name=name,
            namespace=namespace,
            parameters=[params_file],
            output="screen",
            emulate_tty=True,
        )
        for name in profile.nodes
    ]


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "profile",
                default_value="cpu_demo",
                description="cpu_demo, jetson_gguf or gpu_server",
            ),
            DeclareLaunchArgument(
                "namespace",
                default_value="",
                description="namespace for every node (one per robot)",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value="",
                description="parameter YAML overriding the profile's own",
            ),
            OpaqueFunction(function=_nodes_for_profile),
        ]
    )
