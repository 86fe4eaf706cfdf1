"""Package metadata. Exact, tested pins live in requirements-lock.txt (used by CI and environment.yaml)."""

from setuptools import find_packages, setup

EXTRAS = {
    "s3": ["aiobotocore>=2.13", "boto3>=1.34", "botocore>=1.34", "aiofiles>=23.1", "uvloop>=0.19; sys_platform != 'win32'"],
    "formats": ["h5py>=3.8", "pyarrow>=14", "crc32c>=2.3", "braceexpand>=0.1.7"],
    "bench": ["matplotlib>=3.7", "PyYAML>=6", "tqdm>=4.60", "psutil>=5.9", "s3torchconnector>=1.5"],
    "dev": ["pytest>=8", "pytest-asyncio>=0.23", "pytest-timeout>=2.2", "moto[server]>=5", "hypothesis>=6", "psutil>=5.9",
            "trustme>=1.1"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="concurrent_dataloader",
    version="0.1.0",
    description="A drop-in torch DataLoader that hides storage latency (S3, network filesystems) with concurrent fetching",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["concurrent_dataloader", "concurrent_dataloader.*", "benchmarking", "benchmarking.*"]),
    package_data={"concurrent_dataloader": ["py.typed"]},
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy>=1.24", "pillow>=10", "tqdm>=4.60"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": [
        "cdl-build-index=concurrent_dataloader.tools.build_index:main",
        "cdl-upload=concurrent_dataloader.tools.upload:main",
        "cdl-make-shards=concurrent_dataloader.tools.make_shards:main",
        "cdl-convert=concurrent_dataloader.tools.convert:main",
        "cdl-s3-server=benchmarking.s3_server:main",
        "cdl-bench=benchmarking.run:main",
        "cdl-make-synthetic=benchmarking.make_synthetic:main",
    ]},
)
